"""Mille binary I/O (the record format Millepede II's ``pede`` reads), vectorised.

C binary record (what ``Mille.cc`` writes)::

    int32 nw            2n words follow; nw < 0: the n float words are float64
    float f[n]          float32 (float64 if nw < 0)
    int32 i[n]

Fortran binary files wrap each record in sequential-record markers (int32 byte count before and after).
Pairs ``(f[k], i[k])``: k = 0 is the header (0.0, 0); then per measurement (value, 0), (local derivative,
1-based index)..., (sigma, 0), (global derivative, label > 0)...  An optional special block
``(0.0, 0), (-nsp, 0)`` followed by nsp pairs is skipped.

Reading never loops over records in Python: record boundaries are found by pointer doubling over the
candidate record starts of a chunk, and the pairs are decoded with cumulative sums. Plain files are
memory-mapped (chunks are views of the page cache), gzipped ones are streamed. Framing (``iter_raw_chunks``)
and decoding (``RawChunk.decode``) are separate steps, so decoding can run in worker threads.
"""

from __future__ import annotations

import gzip
import mmap
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ..atomic import atomic_path
from .errors import MilleError

__all__ = [
    "MilleError",
    "MilleRecords",
    "iter_mille",
    "iter_raw_chunks",
    "RawChunk",
    "read_mille",
    "write_mille",
    "records_from_dense",
    "concat_records",
]

_MAX_NW = 1 << 28  # sanity limit on one record (2^27 pairs)


@dataclass
class MilleRecords:
    """Flat, vectorised view of a set of Mille records.

    Measurements are numbered 0..n_meas-1 over all records; ``rec_ptr`` (n_records+1) gives each record's
    measurement range. Local and global derivative entries carry the id of their measurement.
    """

    rec_ptr: np.ndarray  # int64 (n_records+1,)
    value: np.ndarray  # float64 (n_meas,)
    sigma: np.ndarray  # float64 (n_meas,)
    loc_meas: np.ndarray  # int64 (n_loc,)
    loc_index: np.ndarray  # int32 (n_loc,) 0-based local parameter index
    loc_der: np.ndarray  # float64
    glb_meas: np.ndarray  # int64 (n_glb,)
    glb_label: np.ndarray  # int64 (n_glb,) label > 0
    glb_der: np.ndarray  # float64
    source: str = "<memory>"
    first_record: int = 0  # 0-based number, in its file, of the first record here
    nbytes: int = field(default=0)
    meas_sorted: bool = False  # loc_meas and glb_meas are known to be non-decreasing (as decoded)
    n_nonfinite: int = 0  # records dropped while decoding because a value, sigma or derivative was NaN/inf

    @property
    def n_records(self) -> int:
        return int(self.rec_ptr.size - 1)

    @property
    def n_meas(self) -> int:
        return int(self.value.size)

    def meas_record(self) -> np.ndarray:
        """Record index (0-based, within this set) of every measurement."""
        return np.repeat(np.arange(self.n_records, dtype=np.int64), np.diff(self.rec_ptr))


def concat_records(parts: list[MilleRecords]) -> MilleRecords:
    """Concatenate record sets (measurement ids are renumbered)."""
    if not parts:
        z = np.zeros(0)
        zi = np.zeros(0, np.int64)
        return MilleRecords(np.zeros(1, np.int64), z, z, zi, zi.astype(np.int32), z, zi, zi, z)
    moff = np.cumsum([0] + [p.n_meas for p in parts])
    rp = [parts[0].rec_ptr] + [p.rec_ptr[1:] + moff[i] for i, p in enumerate(parts) if i > 0]
    return MilleRecords(
        rec_ptr=np.concatenate(rp),
        value=np.concatenate([p.value for p in parts]),
        sigma=np.concatenate([p.sigma for p in parts]),
        loc_meas=np.concatenate([p.loc_meas + moff[i] for i, p in enumerate(parts)]),
        loc_index=np.concatenate([p.loc_index for p in parts]),
        loc_der=np.concatenate([p.loc_der for p in parts]),
        glb_meas=np.concatenate([p.glb_meas + moff[i] for i, p in enumerate(parts)]),
        glb_label=np.concatenate([p.glb_label for p in parts]),
        glb_der=np.concatenate([p.glb_der for p in parts]),
        source=parts[0].source,
        first_record=parts[0].first_record,
        nbytes=sum(p.nbytes for p in parts),
        meas_sorted=all(p.meas_sorted for p in parts),
        n_nonfinite=sum(p.n_nonfinite for p in parts),
    )


# ----------------------------------------------------------------------------------------------- reading


def _open(path: Path) -> BinaryIO:
    f = open(path, "rb")
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return f


def _detect_fortran(head: bytes) -> bool:
    """True if the first record looks like a Fortran sequential record (markers around the C record)."""
    if len(head) < 12:
        return False
    w = np.frombuffer(head[: len(head) // 4 * 4], dtype="<i4")
    nbytes, nw = int(w[0]), int(w[1])
    if nbytes <= 0 or nw == 0 or nw % 2:
        return False
    n = abs(nw) // 2
    fw = n if nw > 0 else 2 * n
    if nbytes != 4 * (1 + fw + n):
        return False
    end = 2 + fw + n
    return end < w.size and int(w[end]) == nbytes or end >= w.size


@dataclass
class RawChunk:
    """Whole records of one file chunk, framed but not decoded (decoding can run in a worker thread)."""

    words: np.ndarray  # int32 view of the chunk
    starts: np.ndarray  # word index of each record's C length word
    nw: np.ndarray  # each record's word count (negative: float64 words)
    source: str
    first_record: int  # 0-based number of the first record in its file
    nbytes: int  # bytes of the file covered

    @property
    def n_records(self) -> int:
        return int(self.starts.size)

    def decode(self) -> MilleRecords:
        """The records as flat arrays (see :class:`MilleRecords`)."""
        recs = _decode(self.words, self.starts, self.nw, self.source, self.first_record)
        recs.nbytes = self.nbytes
        return recs


def _frame_chunk(buf: memoryview | bytes, fortran: bool, eof: bool, source: str, rec0: int) -> RawChunk | None:
    """Find the whole records at the start of ``buf`` (None: not even one complete record yet)."""
    nb = len(buf) // 4 * 4
    words = np.frombuffer(buf, dtype="<i4", count=nb // 4)
    nwords = words.size
    off = 1 if fortran else 0
    if nwords < 1 + off:
        if eof and nwords:
            raise MilleError(f"{source}: truncated record {rec0 + 1} at end of file")
        return None
    from . import _kernels  # numba: only when Mille files are read

    starts, nw, end = _kernels.frame_records(words, fortran, _MAX_NW)
    if starts.size == 0:
        _chunk_failure(words, fortran, eof, source, rec0, 0)
        return None
    if end < nwords or (end * 4 < len(buf)):
        # stopped early: incomplete record at the end of the buffer (fine unless eof) or corruption
        _chunk_failure(words[end:], fortran, eof, source, rec0 + starts.size, end)
    return RawChunk(words, starts, nw, source, rec0, end * 4)


def _chunk_failure(words: np.ndarray, fortran: bool, eof: bool, source: str, recno: int, at: int):
    """Decide whether the data at ``words[0]`` is an incomplete record (return) or corrupt (raise)."""
    off = 1 if fortran else 0
    rn = recno + 1
    if words.size <= off:
        if eof:
            raise MilleError(f"{source}: truncated record {rn} (file ends inside its length word)")
        return None, 0
    nw = int(words[off])
    if nw == 0 or nw % 2 or abs(nw) >= _MAX_NW:
        raise MilleError(f"{source}: corrupt record {rn} (byte offset of record in chunk {at * 4}): "
                         f"invalid word count {nw}")
    n = abs(nw) // 2
    fw = n if nw > 0 else 2 * n
    body = 1 + fw + n
    reclen = body + 2 * off
    if fortran and int(words[0]) != 4 * body:
        raise MilleError(f"{source}: corrupt record {rn}: Fortran record marker {int(words[0])} does not "
                         f"match word count {nw}")
    if reclen > words.size:
        if eof:
            raise MilleError(f"{source}: truncated record {rn}: needs {reclen * 4} bytes, "
                             f"{words.size * 4} left in file")
        return None, 0
    raise MilleError(f"{source}: corrupt record {rn}: bad header pair or record marker")


def _decode(words: np.ndarray, starts: np.ndarray, nw: np.ndarray, source: str, rec0: int) -> MilleRecords:
    """Decode records (C layout beginning at word ``starts``) into flat measurement arrays.

    Records holding a NaN or infinite value, sigma or derivative are dropped and counted in
    ``n_nonfinite`` (the assembler reports them as rejected 'nonfinite').
    """
    out = None
    if not np.any(nw < 0):
        out = _decode_fast(words, starts, nw, source, rec0)
    if out is None:
        out = _decode_general(words, starts, nw, source, rec0)
    bad = _nonfinite_records(out)
    if bad is not None:
        out = _drop_records(out, bad)
    _check_local_indices(out, source, rec0)
    return out


def _nonfinite_records(recs: MilleRecords) -> np.ndarray | None:
    """Boolean mask of the records with a non-finite float (None when every float is finite)."""
    arrays = ((recs.value, None), (recs.sigma, None), (recs.loc_der, recs.loc_meas), (recs.glb_der, recs.glb_meas))
    if all(np.isfinite(a).all() for a, _ in arrays):
        return None
    bad_meas = ~(np.isfinite(recs.value) & np.isfinite(recs.sigma))
    for a, meas in arrays[2:]:
        bad_meas[meas[~np.isfinite(a)]] = True
    bad = np.zeros(recs.n_records, bool)
    bad[recs.meas_record()[bad_meas]] = True
    return bad


def _drop_records(recs: MilleRecords, bad: np.ndarray) -> MilleRecords:
    """``recs`` without the records flagged in ``bad`` (measurement ids renumbered); counts them."""
    keep_m = ~bad[recs.meas_record()]
    new_id = np.cumsum(keep_m) - 1
    keep_l, keep_g = keep_m[recs.loc_meas], keep_m[recs.glb_meas]
    counts = np.diff(recs.rec_ptr)[~bad]
    rec_ptr = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=rec_ptr[1:])
    return MilleRecords(
        rec_ptr=rec_ptr, value=recs.value[keep_m], sigma=recs.sigma[keep_m],
        loc_meas=new_id[recs.loc_meas[keep_l]], loc_index=recs.loc_index[keep_l], loc_der=recs.loc_der[keep_l],
        glb_meas=new_id[recs.glb_meas[keep_g]], glb_label=recs.glb_label[keep_g], glb_der=recs.glb_der[keep_g],
        source=recs.source, first_record=recs.first_record, nbytes=recs.nbytes, meas_sorted=recs.meas_sorted,
        n_nonfinite=recs.n_nonfinite + int(bad.sum()))


def _check_local_indices(recs: MilleRecords, source: str, rec0: int) -> None:
    """A record's local parameter indices must not exceed its number of local derivatives.

    Every local parameter of a record needs at least one derivative to be determined, so the highest
    index is bounded by the record's local-derivative count; a larger index (a flipped bit) would
    otherwise size the local fits of the whole chunk (``n_meas × max index``) before anything fails.
    """
    if not recs.loc_index.size:
        return
    if recs.meas_sorted:  # (as decoded) entries in measurement order: each record's entries are contiguous
        per_rec = np.diff(np.searchsorted(recs.loc_meas, recs.rec_ptr))  # local derivatives of each record
        limit = np.repeat(per_rec, per_rec)
    else:
        per_meas = np.bincount(recs.loc_meas, minlength=recs.n_meas)
        cs = np.zeros(recs.n_meas + 1, np.int64)
        np.cumsum(per_meas, out=cs[1:])
        per_rec = np.diff(cs[recs.rec_ptr])
        limit = per_rec[recs.meas_record()[recs.loc_meas]]
    over = recs.loc_index >= limit
    if over.any():
        k = int(np.flatnonzero(over)[0])
        r = int(recs.meas_record()[recs.loc_meas[k]])
        raise _corrupt(source, rec0 + r + 1, f"local parameter index {int(recs.loc_index[k]) + 1} exceeds the "
                       f"record's {int(limit[k])} local derivative(s)")


def _corrupt(source: str, recno: int, what: str) -> MilleError:
    return MilleError(f"{source}: corrupt record {recno}: {what}")


def _decode_fast(words: np.ndarray, starts: np.ndarray, nw: np.ndarray, source: str, rec0: int
                 ) -> MilleRecords | None:
    """float32 records without special blocks (the common case), record by record in a compiled kernel
    (:func:`b2luca.alignment._kernels.decode_float32`; numba is imported here, when files are decoded).

    Returns None when a special block is present (handled by the general decoder).
    """
    from . import _kernels  # numba: only when records are decoded

    status, r, sig, arrays = _kernels.decode_float32(words, words.view(np.float32), starts, nw)
    if status == 1:
        return None
    if status == 2:
        raise _corrupt(source, rec0 + r + 1, "malformed pair sequence (derivative before a measurement, "
                       "negative index, or value without sigma)")
    if status == 3:
        raise _corrupt(source, rec0 + r + 1, f"non-positive sigma {sig}")
    rec_ptr, value, sigma, loc_meas, loc_index, loc_der, glb_meas, glb_label, glb_der = arrays
    return MilleRecords(
        rec_ptr=rec_ptr, value=value, sigma=sigma, loc_meas=loc_meas, loc_index=loc_index, loc_der=loc_der,
        glb_meas=glb_meas, glb_label=glb_label, glb_der=glb_der, source=source, first_record=rec0,
        meas_sorted=True,
    )


def _decode_general(words: np.ndarray, starts: np.ndarray, nw: np.ndarray, source: str, rec0: int
                    ) -> MilleRecords:
    """Any records (float64 words, special blocks)."""
    nrec = starts.size
    n = np.abs(nw) // 2
    dbl = nw < 0
    pptr = np.zeros(nrec + 1, dtype=np.int64)
    np.cumsum(n, out=pptr[1:])
    npairs = int(pptr[-1])
    rec_of = np.repeat(np.arange(nrec, dtype=np.int64), n)
    k = np.arange(npairs, dtype=np.int64) - pptr[:-1][rec_of]
    fstart = starts + 1
    istart = fstart + np.where(dbl, 2 * n, n)
    ints = words[istart[rec_of] + k].astype(np.int64)
    floats = np.empty(npairs, dtype=np.float64)
    if dbl.any():
        d = dbl[rec_of]
        fi = fstart[rec_of] + np.where(d, 2 * k, k)
        floats[~d] = words[fi[~d]].view(np.float32)
        lo = words[fi[d]].view(np.uint32).astype(np.uint64)
        hi = words[fi[d] + 1].view(np.uint32).astype(np.uint64)
        floats[d] = (lo | (hi << np.uint64(32))).view(np.float64)
    else:
        floats[:] = words[fstart[rec_of] + k].view(np.float32)

    keep = np.ones(npairs, dtype=bool)
    keep[pptr[:-1]] = False  # header pairs
    # special blocks: (0.0, 0) followed by (-nsp, 0); skip nsp + 2 pairs
    z = ints == 0
    sp = np.flatnonzero(z[:-1] & z[1:] & (floats[:-1] == 0.0) & (floats[1:] < 0.0) & keep[:-1])
    if sp.size:
        # the block length must fit in what is left of its record before anything is sized by it
        room = pptr[1:][rec_of[sp]] - sp - 2
        nspf = -floats[sp + 1]
        over = ~(nspf <= room)  # NaN too
        if over.any():
            bad = int(rec_of[sp[np.flatnonzero(over)[0]]])
            raise MilleError(f"{source}: corrupt record {rec0 + bad + 1}: special block of {nspf[over][0]:g} pairs "
                             "overruns the record")
        nsp = np.rint(nspf).astype(np.int64)
        ln = nsp + 2
        rel = np.arange(int(ln.sum())) - np.repeat(np.cumsum(ln) - ln, ln)
        drop = np.repeat(sp, ln) + rel
        if drop.size and (drop.max() >= npairs or np.any(rec_of[np.minimum(drop, npairs - 1)]
                                                           != np.repeat(rec_of[sp], ln))):
            bad = rec_of[sp[0]]
            raise MilleError(f"{source}: corrupt record {rec0 + bad + 1}: special block overruns record")
        keep[drop] = False
    ints = ints[keep]
    floats = floats[keep]
    rec_of = rec_of[keep]
    z = ints == 0
    # rank of zero pairs within the record: odd -> measured value, even -> sigma
    cz = np.cumsum(z)
    first = np.searchsorted(rec_of, np.arange(nrec))  # first kept pair of each record
    base = np.zeros(nrec, dtype=np.int64)
    has = first < rec_of.size
    base[has] = cz[first[has]] - z[first[has]]
    rank = cz - base[rec_of]
    is_val = z & (rank % 2 == 1)
    is_sig = z & (rank % 2 == 0)
    is_loc = ~z & (rank % 2 == 1)
    is_glb = ~z & (rank % 2 == 0) & (rank > 0)
    bad = (~z & (rank == 0)) | (ints < 0)
    zcount = np.bincount(rec_of[z], minlength=nrec)
    if bad.any() or np.any(zcount % 2):
        r = int(rec_of[np.flatnonzero(bad)[0]]) if bad.any() else int(np.flatnonzero(zcount % 2)[0])
        raise MilleError(f"{source}: corrupt record {rec0 + r + 1}: malformed pair sequence "
                         "(derivative before a measurement, negative index, or value without sigma)")
    meas_id = np.cumsum(is_val) - 1
    value = floats[is_val]
    sigma = floats[is_sig]
    if np.any(sigma <= 0):  # NaN: a non-finite record, dropped and counted by _decode
        m = int(np.flatnonzero(sigma <= 0)[0])
        r = int(rec_of[is_sig][m])
        raise MilleError(f"{source}: corrupt record {rec0 + r + 1}: non-positive sigma {sigma[m]}")
    nmeas_rec = np.bincount(rec_of[is_val], minlength=nrec)
    rec_ptr = np.zeros(nrec + 1, dtype=np.int64)
    np.cumsum(nmeas_rec, out=rec_ptr[1:])
    return MilleRecords(
        rec_ptr=rec_ptr, value=value, sigma=sigma,
        loc_meas=meas_id[is_loc], loc_index=(ints[is_loc] - 1).astype(np.int32), loc_der=floats[is_loc],
        glb_meas=meas_id[is_glb], glb_label=ints[is_glb], glb_der=floats[is_glb],
        source=source, first_record=rec0, meas_sorted=True,
    )


def iter_raw_chunks(path: str | os.PathLike, fortran: bool | None = None,
                    chunk_bytes: int = 32 << 20) -> Iterator[RawChunk]:
    """Yield the framed (not yet decoded) records of a Mille file in chunks of about ``chunk_bytes``.

    Plain or gzipped; ``fortran=None`` detects the record framing from the first record.
    """
    path = Path(path)
    source = str(path)
    try:
        mapped = _map(path)
    except OSError as exc:
        raise MilleError(f"{source}: cannot open: {exc}") from exc
    if mapped is not None:
        yield from _iter_mapped(mapped, fortran, chunk_bytes, source)
        return
    if path.stat().st_size == 0:
        raise MilleError(f"{source}: empty Mille file (no records)")
    try:
        fh = _open(path)
    except OSError as exc:
        raise MilleError(f"{source}: cannot open: {exc}") from exc
    with fh:
        carry = b""
        rec0 = 0
        eof = False
        want = chunk_bytes
        first = True
        while not eof or carry:
            data = _read_gzip(fh, max(want - len(carry), 1 << 16), source, rec0) if not eof else b""
            if not data:
                eof = True
            buf = carry + data if carry else data
            if first:
                if not buf and eof:
                    raise MilleError(f"{source}: empty Mille file (no records after decompression)")
                if fortran is None:
                    fortran = _detect_fortran(bytes(buf[:1 << 16]))
                first = False
            if not buf:
                return
            raw = _frame_chunk(buf, bool(fortran), eof, source, rec0)
            if raw is None:
                if eof:
                    raise MilleError(f"{source}: truncated record {rec0 + 1} at end of file")
                carry = buf
                want = max(want, 2 * len(buf))  # one record larger than the chunk: read more
                continue
            carry = buf[raw.nbytes:]
            want = chunk_bytes
            rec0 += raw.n_records
            yield raw
            if eof and not carry:
                return


def _read_gzip(fh: BinaryIO, size: int, source: str, rec0: int) -> bytes:
    """Read from a (gzip) stream; a damaged stream becomes a MilleError naming the file and position."""
    try:
        return fh.read(size)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        at = getattr(getattr(fh, "fileobj", None), "tell", lambda: None)()
        where = f" near compressed byte {at}" if isinstance(at, int) else ""
        kind = "truncated" if isinstance(exc, EOFError) else "corrupt"
        raise MilleError(f"{source}: {kind} gzip stream{where}, after record {rec0} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split()) or 'no detail'})") from None


def _map(path: Path) -> mmap.mmap | None:
    """The file memory-mapped read-only (None for gzipped or empty files, which are streamed)."""
    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            return None
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return None
        # the map stays valid after the file is closed; it is released with the last array viewing it
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


#: chunks of a mapped file kept resident behind the newest one (they may still be decoding in other threads;
#: with 4 MB chunks, at most 128 MB of the file)
_RELEASE_LAG = 32


def _iter_mapped(mm: mmap.mmap, fortran: bool | None, chunk_bytes: int, source: str) -> Iterator[RawChunk]:
    """Chunks of a memory-mapped file: views into the page cache, no copy.

    The pages of chunks ``_RELEASE_LAG`` behind the newest are dropped from this process (``MADV_DONTNEED``;
    they stay in the page cache, and a late reader would fault them in again, reading the same bytes), so the
    resident memory of the data pass does not grow with the file.
    """
    size = len(mm)
    view = memoryview(mm)
    if fortran is None:
        fortran = _detect_fortran(bytes(view[: 1 << 16]))
    dontneed = getattr(mmap, "MADV_DONTNEED", None)
    starts: list[int] = []
    released = 0
    pos = 0
    rec0 = 0
    want = chunk_bytes
    while pos < size:
        if dontneed is not None and len(starts) > _RELEASE_LAG:
            upto = starts.pop(0) // mmap.PAGESIZE * mmap.PAGESIZE
            if upto > released:
                try:
                    mm.madvise(dontneed, released, upto - released)
                except (OSError, ValueError):
                    dontneed = None
                released = max(released, upto)
        stop = min(size, pos + want)
        raw = _frame_chunk(view[pos:stop], bool(fortran), stop == size, source, rec0)
        if raw is None:
            if stop == size:
                raise MilleError(f"{source}: truncated record {rec0 + 1} at end of file")
            want *= 2  # one record larger than the chunk
            continue
        starts.append(pos)
        pos += raw.nbytes
        rec0 += raw.n_records
        want = chunk_bytes
        yield raw


def iter_mille(path: str | os.PathLike, fortran: bool | None = None,
               chunk_bytes: int = 32 << 20) -> Iterator[MilleRecords]:
    """Yield the records of a Mille file in chunks (plain or gzipped; C or Fortran; float32/float64).

    ``fortran=None`` detects the record framing from the first record.
    """
    for raw in iter_raw_chunks(path, fortran=fortran, chunk_bytes=chunk_bytes):
        yield raw.decode()


def read_mille(path: str | os.PathLike, fortran: bool | None = None) -> MilleRecords:
    """Read a whole Mille file into one :class:`MilleRecords`."""
    parts = list(iter_mille(path, fortran=fortran))
    out = concat_records(parts)
    out.source = str(path)
    return out


# ----------------------------------------------------------------------------------------------- writing


def _encode(recs: MilleRecords, fortran: bool, double: bool) -> bytes:
    nrec = recs.n_records
    nmeas = recs.n_meas
    mrec = recs.meas_record()
    nloc_m = np.bincount(recs.loc_meas, minlength=nmeas)
    nglb_m = np.bincount(recs.glb_meas, minlength=nmeas)
    # pairs per measurement: value, locals, sigma, globals
    mlen = 2 + nloc_m + nglb_m
    mstart = np.zeros(nmeas + 1, dtype=np.int64)
    np.cumsum(mlen, out=mstart[1:])
    # pairs per record (header + measurements)
    rpairs = 1 + np.bincount(mrec, weights=mlen, minlength=nrec).astype(np.int64)
    rstart = np.zeros(nrec + 1, dtype=np.int64)
    np.cumsum(rpairs, out=rstart[1:])
    npairs = int(rstart[-1])
    # pair position of measurement m = rstart[rec] + 1 + (mstart[m] - mstart[first meas of rec])
    mpos = rstart[:-1][mrec] + 1 + mstart[:-1] - mstart[recs.rec_ptr[:-1]][mrec]
    f = np.zeros(npairs, dtype=np.float64)
    i = np.zeros(npairs, dtype=np.int64)
    f[mpos] = recs.value
    f[mpos + 1 + nloc_m] = recs.sigma
    # locals in given order within their measurement
    order = np.argsort(recs.loc_meas, kind="stable")
    lm = recs.loc_meas[order]
    lrank = np.arange(lm.size) - np.searchsorted(lm, lm)
    lp = mpos[lm] + 1 + lrank
    f[lp] = recs.loc_der[order]
    i[lp] = recs.loc_index[order].astype(np.int64) + 1
    order = np.argsort(recs.glb_meas, kind="stable")
    gm = recs.glb_meas[order]
    grank = np.arange(gm.size) - np.searchsorted(gm, gm)
    gp = mpos[gm] + 2 + nloc_m[gm] + grank
    f[gp] = recs.glb_der[order]
    i[gp] = recs.glb_label[order]
    # words per record: [marker] nw floats ints [marker]
    fwords = 2 if double else 1
    off = 1 if fortran else 0
    body = 1 + rpairs * (fwords + 1)
    rw = body + 2 * off
    wstart = np.zeros(nrec + 1, dtype=np.int64)
    np.cumsum(rw, out=wstart[1:])
    out = np.zeros(int(wstart[-1]), dtype="<i4")
    nwv = 2 * rpairs * (-1 if double else 1)
    out[wstart[:-1] + off] = nwv
    if fortran:
        out[wstart[:-1]] = 4 * body
        out[wstart[1:] - 1] = 4 * body
    prec = np.repeat(np.arange(nrec), rpairs)
    k = np.arange(npairs) - rstart[:-1][prec]
    fbase = wstart[:-1][prec] + off + 1
    if double:
        bits = f.view(np.uint64)
        out[fbase + 2 * k] = (bits & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)
        out[fbase + 2 * k + 1] = (bits >> np.uint64(32)).astype(np.uint32).view(np.int32)
        out[fbase + 2 * rpairs[prec] + k] = i
    else:
        out[fbase + k] = f.astype(np.float32).view(np.int32)
        out[fbase + rpairs[prec] + k] = i
    return out.tobytes()


def write_mille(path: str | os.PathLike, recs: MilleRecords, *, fortran: bool = False,
                double: bool = False, compress: bool | None = None) -> None:
    """Write records as a Mille file (atomically). ``compress=None``: gzip if the name ends in ``.gz``."""
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    data = _encode(recs, fortran, double)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if compress:
            with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1) as gz:
                gz.write(data)
        else:
            fh.write(data)


def records_from_dense(value: np.ndarray, sigma: np.ndarray, local: np.ndarray, glb_label: np.ndarray,
                       glb_der: np.ndarray, rec_ptr: np.ndarray) -> MilleRecords:
    """Build records from dense per-measurement arrays (zeros dropped, as ``Mille.cc`` does).

    ``local`` (n_meas, n_loc) local derivatives; ``glb_label``/``glb_der`` (n_meas, n_g) labels and
    derivatives (label 0 or derivative 0 = absent); ``rec_ptr`` (n_rec+1) measurement offsets.
    """
    value = np.asarray(value, np.float64)
    lm, li = np.nonzero(local)
    gm, gi = np.nonzero((glb_der != 0) & (glb_label > 0))
    return MilleRecords(
        rec_ptr=np.asarray(rec_ptr, np.int64), value=value, sigma=np.asarray(sigma, np.float64),
        loc_meas=lm.astype(np.int64), loc_index=li.astype(np.int32), loc_der=local[lm, li].astype(np.float64),
        glb_meas=gm.astype(np.int64), glb_label=glb_label[gm, gi].astype(np.int64),
        glb_der=glb_der[gm, gi].astype(np.float64),
    )

