"""Vectorised assembly of the global normal equations from Mille records.

Per record (track) the local parameters are eliminated exactly (Schur complement, see
:mod:`b2luca.alignment.local_fit`).  All sums are scatter-adds of per-measurement entries into per-record
dense arrays; records are grouped by shape and the Schur complements of a whole group are computed with
batched numpy linear algebra.  The global matrix is accumulated by label *blocks* (labels that always
appear in the same measurements, e.g. the 6 rigid-body parameters of a sensor; registry in
:mod:`b2luca.alignment.labels`), so each record contributes a few dense block pairs, summed per chunk with
one sparse x dense product into the store of :mod:`b2luca.alignment.global_system`.  There is no Python
loop over records except in the union batches below (records of hundreds of labels, where each record's
product outweighs the loop).

Fast path (every measurement touches one label block, the usual case): the per-record sums are sparse x
dense products that never form per-measurement outer products; D is summed per global block directly;
F = M Mᵀ (M = H Γ^-½, Γ factorised by a Cholesky vectorised over the records) is formed in cache-sized
batches of records sorted by their blocks, and its upper block pairs are added in place to the block-pair
sums of the chunk by a −1 sparse pattern whose columns pick rows of F (``_add_picked``), so no per-record
block-pair array is gathered or copied.  Records of many blocks (nb·S >= :data:`UNION_MIN_K`: a track through the
VXD and every CDC layer) are instead stacked side by side, a batch of similar records at a time, and summed by one
product over the union of their blocks (:func:`_add_union_batches`).

Chunks of single-block records skip all of the above: compiled kernels fit and sum them record by record
(:mod:`b2luca.alignment.fast_path` decides; :mod:`b2luca.alignment._kernels` computes narrow records, at most
:data:`~b2luca.alignment.local_fit.SMALL_Q` local parameters and every record below :data:`UNION_MIN_K`: the usual
Mille files; :mod:`b2luca.alignment._wide_kernels` the others); the cuts and reject counts below are shared by
all paths.

A chunk goes through :meth:`Assembler.index` (labels; in chunk order), :meth:`Assembler.compute` (its
compact :class:`ChunkSums`; any thread) and :meth:`Assembler.absorb` (into the one accumulator; in chunk
order), so the sums, to the last bit, do not depend on how many threads computed them, and memory holds one
global matrix plus the sums of the chunks in flight.

This module accepts or rejects records (singular local fit, χ² cuts, down-weighting) and drives the other
three; :class:`Assembler` is the entry point.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ._arrays import index_type, outer_segsum, unique_ints
from .global_system import NBIG, BlockPairStore, GlobalSystem, add_rows, merge_systems
from .fast_path import CompiledPath, compiled_path
from .labels import LabelRegistry
from .local_fit import LocalSystems, local_systems, residuals
from .mille import MilleRecords, RawChunk

__all__ = ["Assembler", "ChunkSums", "GlobalSystem", "DownWeighting", "merge_systems"]

_F_BATCH_BYTES = 1 << 20  # records per F = M Mᵀ batch: about this many bytes of F (fits the L2 cache)
#: records with at least this many block rows (nb·S) are summed by :func:`_add_union_batches`
UNION_MIN_K = 128
UNION_COLUMNS = 192  # at most this many local columns (Σq) per union batch (demo: 192 ~ 15 % faster than 384)
UNION_GROWTH = 2.0  # and a union of at most sqrt(this × Σ nb²) blocks
HUBER_C = 3.0  # Huber cut in units of the normalised residual (first down-weighting iteration)
CAUCHY_C = 2.3849  # Cauchy scale (later iterations), as pede


@dataclass
class DownWeighting:
    """Outlier treatment for one data pass."""

    iterations: int = 0  # local down-weighting iterations (0 = none)
    chi2_factor: float | None = None  # reject records with χ² > factor × χ²(3σ, ndf)
    hugecut: float | None = None  # reject records with χ²/ndf > hugecut
    dwfractioncut: float = 0.0  # reject records whose down-weighted fraction exceeds this


@dataclass
class ChunkSums:
    """What one chunk adds to the normal equations, computed without touching the accumulator.

    Compact: only the block pairs the chunk's records touch (sorted keys and their S·S sums), so a few of
    these in flight cost little memory whatever the size of the global matrix.
    """

    n_records: int = 0
    bytes_read: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    n_used: int = 0
    n_meas: int = 0
    chi2_0: float = 0.0
    ndf: int = 0
    dw_sum: float = 0.0
    dw_n: int = 0
    entries: np.ndarray | None = None  # measurements per label index (accepted records)
    b_index: list[np.ndarray] = field(default_factory=list)  # label indices and values added to b
    b_value: list[np.ndarray] = field(default_factory=list)
    pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (sorted keys, (k, S·S) sums)
    dblk: np.ndarray | None = None  # Σ w d dᵀ per label block (single-block measurements)

    def reject(self, why: str, n: int) -> None:
        """Count ``n`` records rejected for reason ``why``."""
        self.rejected[why] = self.rejected.get(why, 0) + n



class Assembler:
    """Streams record chunks into block-sparse normal equations.

    ``corrections``: current global corrections (label -> value, or arrays (labels, values)) used to
    form residuals in later iterations (``None`` = all zero).  ``stride``: label-block width (default:
    from the first labels seen, at most 16).
    """

    def __init__(self, corrections: dict[int, float] | tuple[np.ndarray, np.ndarray] | None = None,
                 downweight: DownWeighting | None = None, stride: int | None = None):
        self.dw = downweight or DownWeighting()
        self.registry = LabelRegistry(stride)
        self.store = BlockPairStore((stride or 1) ** 2)
        self.bvec = np.zeros(0)
        self.entries = np.zeros(0, np.int64)
        self.chi2_0 = 0.0
        self.ndf = 0
        self.n_records = 0
        self.n_used = 0
        self.n_meas = 0
        self.dw_sum = 0.0
        self.dw_n = 0
        self.rejected: dict[str, int] = {"singular": 0, "chiscut": 0, "hugecut": 0, "dwfraction": 0,
                                         "no_globals": 0}
        self.bytes_read = 0
        self._tls = threading.local()  # per-thread work buffers (see _scratch)
        self._dblk = np.zeros((0, (stride or 1) ** 2))  # Σ w d dᵀ per label block (single-block measurements)
        if corrections is None:
            self.corr_labels = np.zeros(0, np.int64)
            self.corr_values = np.zeros(0)
        elif isinstance(corrections, dict):
            lab = np.fromiter(corrections.keys(), np.int64, len(corrections))
            val = np.fromiter(corrections.values(), np.float64, len(corrections))
            o = np.argsort(lab)
            self.corr_labels, self.corr_values = lab[o], val[o]
        else:
            lab, val = corrections
            o = np.argsort(lab)
            self.corr_labels, self.corr_values = np.asarray(lab, np.int64)[o], np.asarray(val, float)[o]

    def _scratch(self, n: int) -> np.ndarray:
        """A reused float64 work buffer of at least ``n`` values, one per thread (valid until the next call)."""
        buf = getattr(self._tls, "buf", None)
        if buf is None or buf.size < n:
            buf = np.empty(max(n, int(1.25 * (0 if buf is None else buf.size))))
            self._tls.buf = buf
        return buf[:n]

    def _grow(self) -> None:
        """Zero sums for the labels registered since the last call."""
        k = self.registry.labels.size - self.bvec.size
        if k:
            self.bvec = np.concatenate([self.bvec, np.zeros(k)])
            self.entries = np.concatenate([self.entries, np.zeros(k, np.int64)])

    def index(self, recs: MilleRecords) -> np.ndarray:
        """Label index of every global entry of ``recs``; registers new labels (and fixes the stride).

        The only step that changes the label registry: call it for the chunks in their order, one at a time.
        """
        idx = self.registry.index(recs)
        S = self.registry.stride or 1
        if self.store.width != S * S:  # the first labels fixed the stride: nothing is stored yet
            self.store = BlockPairStore(S * S)
            self._dblk = np.zeros((0, S * S))
        return idx

    # ---------------------------------------------------------------------------------------- chunks
    def add(self, recs: MilleRecords | RawChunk) -> None:
        """Eliminate the local parameters of all records in ``recs`` and accumulate."""
        recs = self.prepare(recs)
        self.absorb(self.compute(recs, self.index(recs)))

    @staticmethod
    def prepare(recs: MilleRecords | RawChunk) -> MilleRecords:
        """Decode a raw chunk and sort its entries by measurement (no shared state: any thread)."""
        if isinstance(recs, RawChunk):
            recs = recs.decode()
        if recs.n_records == 0:
            return recs
        if recs.glb_meas.size > 1 and not recs.meas_sorted and np.any(np.diff(recs.glb_meas) < 0):
            o = np.argsort(recs.glb_meas, kind="stable")
            recs.glb_meas, recs.glb_label, recs.glb_der = recs.glb_meas[o], recs.glb_label[o], recs.glb_der[o]
        if recs.loc_meas.size > 1 and not recs.meas_sorted and np.any(np.diff(recs.loc_meas) < 0):
            o = np.argsort(recs.loc_meas, kind="stable")
            recs.loc_meas, recs.loc_index, recs.loc_der = recs.loc_meas[o], recs.loc_index[o], recs.loc_der[o]
        return recs

    def compute(self, recs: MilleRecords, lidx: np.ndarray) -> ChunkSums:
        """The sums of one prepared chunk (``lidx`` from :meth:`index`); reads the registry and the
        corrections only, so chunks indexed in order may be computed by several threads at once."""
        nrec = recs.n_records
        p = ChunkSums(n_records=nrec + recs.n_nonfinite, bytes_read=recs.nbytes)  # NaN/inf records: dropped
        p.reject("nonfinite", recs.n_nonfinite)
        if nrec == 0:
            return p
        bmem = self.registry.block_members  # a snapshot: later chunks replace (never change) these arrays
        label_block, label_pos = self.registry.label_block, self.registry.label_pos
        S = self.registry.stride
        assert S is not None  # set by the first labels
        meas_rec = recs.meas_record()
        # residual w.r.t. the current corrections
        y = recs.value.copy()
        if self.corr_labels.size:
            pos = np.searchsorted(self.corr_labels, recs.glb_label)
            pc = np.minimum(pos, self.corr_labels.size - 1)
            cv = np.where(self.corr_labels[pc] == recs.glb_label, self.corr_values[pc], 0.0)
            y -= np.bincount(recs.glb_meas, weights=recs.glb_der * cv, minlength=recs.n_meas)
        w = 1.0 / recs.sigma ** 2
        # narrow single-block records: the record-block structure, local fits and sums by compiled kernels
        gpos = label_pos[lidx]
        kern = compiled_path(recs, label_block[lidx], S, UNION_MIN_K)
        if kern is not None:
            nloc, nb, ustart, ublk = kern.q, kern.nb, kern.ustart, kern.ublk
        else:
            nloc = np.zeros(nrec, np.int64)
            if recs.loc_index.size:
                # highest local index per record: entries are in measurement (so record) order
                lrec = meas_rec[recs.loc_meas]
                first = np.flatnonzero(np.r_[True, lrec[1:] != lrec[:-1]])
                nloc[lrec[first]] = np.maximum.reduceat(recs.loc_index, first).astype(np.int64) + 1
            # record-block structure
            blk = label_block[lidx]
            erec = meas_rec[recs.glb_meas]
            NB = np.int64(bmem.shape[0])
            ekey = erec * NB + blk
            # consecutive entries mostly repeat the key (all derivatives of a hit): unique over the changes only
            chg = np.ones(ekey.size, bool)
            if ekey.size > 1:
                np.not_equal(ekey[1:], ekey[:-1], out=chg[1:])
            kc = ekey[chg]
            ukey = unique_ints(kc)
            einv = np.searchsorted(ukey, kc)[np.cumsum(chg) - 1]  # search the changes only, then spread
            urec = ukey // NB
            ublk = ukey % NB
            nb = np.bincount(urec, minlength=nrec)
            ustart = np.zeros(nrec + 1, np.int64)
            np.cumsum(nb, out=ustart[1:])
            urank = np.arange(ukey.size) - ustart[urec]
            eslot = urank[einv.ravel()] * S + gpos
        has_glb = nb > 0
        p.reject("no_globals", int((~has_glb).sum()))
        K = nb * S
        q = nloc
        nmeas_r = np.diff(recs.rec_ptr)

        def system(wm: np.ndarray) -> LocalSystems:
            return local_systems(recs, y, wm, meas_rec, eslot, K, q, S)

        if kern is not None:
            chi2_r, ok, fsum, wfin = kern.kernels.fit_records(recs.rec_ptr, kern.loc_ptr, recs.loc_index, recs.loc_der,
                                                              y, w, q, self.dw.iterations, HUBER_C, CAUCHY_C)
        else:
            local = system(w)
            wm = w
            for it in range(self.dw.iterations):
                resid = residuals(recs, y, local, meas_rec)
                z = np.abs(resid) * np.sqrt(w)
                if it == 0:
                    f = np.where(z > HUBER_C, HUBER_C / np.maximum(z, 1e-300), 1.0)
                else:
                    f = 1.0 / (1.0 + (z / CAUCHY_C) ** 2)
                wm = w * f
                local = system(wm)
            chi2_r, ok = local.chi2, local.ok
            if self.dw.iterations > 0:
                fsum = np.bincount(meas_rec, weights=wm / w, minlength=nrec)
        frac_dw = np.zeros(nrec)
        if self.dw.iterations > 0:  # the down-weighting bookkeeping of either path: Σ of the final weight factors
            frac_dw = 1.0 - fsum / np.maximum(nmeas_r, 1)
            p.dw_sum += float((nmeas_r - fsum).sum())
            p.dw_n += int(nmeas_r.sum())
        ndf_r = nmeas_r - q
        accept = ok & has_glb
        p.reject("singular", int((~ok & has_glb).sum()))
        if self.dw.hugecut is not None:
            bad = accept & (ndf_r > 0) & (chi2_r / np.maximum(ndf_r, 1) > self.dw.hugecut)
            p.reject("hugecut", int(bad.sum()))
            accept &= ~bad
        if self.dw.chi2_factor is not None and self.dw.chi2_factor > 0:
            lim = self.dw.chi2_factor * _chi2_3sigma(ndf_r)
            bad = accept & (ndf_r > 0) & (chi2_r > lim)
            p.reject("chiscut", int(bad.sum()))
            accept &= ~bad
        if self.dw.iterations > 0 and self.dw.dwfractioncut > 0:
            bad = accept & (frac_dw > self.dw.dwfractioncut)
            p.reject("dwfraction", int(bad.sum()))
            accept &= ~bad
        p.n_used = int(accept.sum())
        p.n_meas = int(nmeas_r[accept].sum())
        p.chi2_0 = float(chi2_r[accept].sum())
        p.ndf = int(ndf_r[accept].sum())
        if kern is not None:
            self._accumulate_compiled(p, kern, recs, accept, lidx, gpos, y, wfin, bmem)
            return p
        acc_e = accept[erec]
        p.entries = np.bincount(lidx[acc_e], minlength=self.registry.labels.size)
        # accumulate the block pairs of accepted records, group by group
        # the per-record block pairs stay in place in Pbuf (rows of S·S values): only their row numbers and
        # block-pair keys are gathered, and one sparse (0/1) x dense product sums them per key
        keys_all, rows_all, bm_all, bv_all = [], [], [], []
        poff = local.Poff
        for g in local.groups:
            rec, br, nbg = g.rec, g.b, g.nb
            a = accept[rec]
            if not a.any() or nbg == 0:
                continue
            if not a.all():
                rec, br = rec[a], br[a]
            R = rec.size
            bl = ublk[ustart[rec][:, None] + np.arange(nbg)[None, :]]  # (R, nb) sorted block ids
            ta, tb = np.triu_indices(nbg)
            keys_all.append((bl[:, ta] * NBIG + bl[:, tb]).ravel())
            rows_all.append((poff[rec][:, None] + np.arange(ta.size)[None, :]).ravel())
            members = bmem[bl].reshape(R, nbg * S)
            m = members >= 0
            bm_all.append(members[m])
            bv_all.append(br[m])
        if local.Pbuf is None:
            self._accumulate_fd(p, bmem, local, accept, ublk, ustart, nb)
            return p
        if keys_all:
            p.b_index.append(np.concatenate(bm_all))
            p.b_value.append(np.concatenate(bv_all))
            keys = np.concatenate(keys_all)
            rows = np.concatenate(rows_all)
            o = np.argsort(keys, kind="stable")
            sk = keys[o]
            first = np.ones(sk.size, bool)
            np.not_equal(sk[1:], sk[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            uk = sk[starts]
            indptr = np.append(starts, sk.size).astype(np.int64)
            Pv = local.Pbuf.reshape(-1, S * S)
            A = sp.csr_matrix((np.ones(sk.size), rows[o], indptr), shape=(uk.size, Pv.shape[0]))
            p.pairs.append((uk, np.asarray(A @ Pv)))
        return p

    def absorb(self, p: ChunkSums) -> None:
        """Add one chunk's sums (call for the chunks in their order, one at a time: fixed round-off)."""
        self.n_records += p.n_records
        self.bytes_read += p.bytes_read
        for k, v in p.rejected.items():
            self.rejected[k] = self.rejected.get(k, 0) + v
        self.n_used += p.n_used
        self.n_meas += p.n_meas
        self.chi2_0 += p.chi2_0
        self.ndf += p.ndf
        self.dw_sum += p.dw_sum
        self.dw_n += p.dw_n
        self._grow()
        if p.entries is not None:
            self.entries[: p.entries.size] += p.entries
        for bi, bv in zip(p.b_index, p.b_value):
            self.bvec += np.bincount(bi, weights=bv, minlength=self.bvec.size)
        for uk, sums in p.pairs:
            self.store.merge(uk, sums)
        if p.dblk is not None:
            nblk = p.dblk.shape[0]
            if self._dblk.shape[0] < nblk:
                self._dblk = np.concatenate([self._dblk, np.zeros((nblk - self._dblk.shape[0], p.dblk.shape[1]))])
            self._dblk[:nblk] += p.dblk

    def _accumulate_compiled(self, p: ChunkSums, kern: CompiledPath, recs: MilleRecords, accept: np.ndarray,
                             lidx: np.ndarray, gpos: np.ndarray, y: np.ndarray, wfin: np.ndarray,
                             bmem: np.ndarray) -> None:
        """The sums of the accepted records of a chunk on the compiled path (weights ``wfin`` of their last
        fit): b, entries and D per block in dense per-chunk arrays, −M Mᵀ into the rows of the chunk's
        distinct upper block pairs (sorted keys found before the kernel runs)."""
        S = bmem.shape[1]
        nlab = self.registry.labels.size
        nb, ustart, ublk = kern.nb, kern.ustart, kern.ublk
        from . import _wide_kernels  # (numba is loaded: kern holds compiled kernels)

        nblk = int(ublk.max()) + 1 if ublk.size else 0  # (the chunk's blocks: a table of their pairs)
        if nblk <= _wide_kernels.PAIR_TABLE_BLOCKS:  # the same keys and rows, without sorting them
            uk, kinv, pair_off = _wide_kernels.pair_index(accept, nb, ustart, ublk, nblk, int(NBIG))
        else:
            keys, pair_off = kern.kernels.pair_keys(accept, nb, ustart, ublk, int(NBIG))
            uk, kinv = _unique_inverse(keys)
        tot = np.zeros((uk.size, S * S))
        p.dblk = np.zeros((bmem.shape[0], S * S))
        bsum = np.zeros(nlab)
        p.entries = np.zeros(nlab, np.int64)
        # records along similar tracks one after the other (by first and last block; records without blocks
        # are skipped): the pair sums they add to stay in the cache
        order = np.arange(nb.size)
        if ublk.size:
            first = ublk[np.minimum(ustart[:-1], ublk.size - 1)]
            last = ublk[np.maximum(ustart[1:] - 1, 0)]
            order = np.argsort(first * np.int64(bmem.shape[0]) + last, kind="stable")
        kern.kernels.accumulate(order, accept, recs.rec_ptr, kern.loc_ptr, recs.loc_index, recs.loc_der, kern.glb_ptr, kern.mrank,
                                gpos, recs.glb_der, lidx, y, wfin, kern.q, nb, ustart, ublk, bmem, pair_off, kinv, tot, p.dblk,
                                bsum, p.entries)
        p.b_index.append(np.flatnonzero(bsum))
        p.b_value.append(bsum[p.b_index[-1]])
        if uk.size:
            p.pairs.append((uk, tot))

    def _accumulate_fd(self, p: ChunkSums, bmem: np.ndarray, local: LocalSystems, accept: np.ndarray,
                       ublk: np.ndarray, ustart: np.ndarray, nb: np.ndarray) -> None:
        """Single-block measurements: C_r = D_r − F_r, D summed per global block, F = M Mᵀ per shape group.

        Both are summed per block pair by sparse (±1) x dense products whose column indices pick the upper
        block pairs straight out of F viewed as rows of S values (no gather copy).
        """
        S = self.registry.stride
        assert S is not None and local.rb_m is not None and local.wd is not None and local.d is not None
        nrec = accept.size
        # D: per-measurement outer products of accepted records, keyed by the measurement's block (diagonal pair)
        rb_rec = np.repeat(np.arange(nrec), nb)
        rbm = local.rb_m
        m_sel = np.flatnonzero(accept[rb_rec[rbm]])
        bd = ublk[rbm[m_sel]]
        # D block (s, :) += w d_s dᵀ, summed per global block (a diagonal block pair), added in finish()
        p.dblk = outer_segsum(bd, local.wd[m_sel], local.d[m_sel], bmem.shape[0])
        parts = []  # (upper block-pair keys (R·n_pairs,), nb, M of the accepted records, their block ids)
        bm_all, bv_all = [], []
        for g in local.groups:
            rec, br, nbg, M = g.rec, g.b, g.nb, g.M
            a = accept[rec]
            if not a.any() or nbg == 0:
                continue
            sel = np.flatnonzero(a)
            rec_a = rec[sel]
            R = rec_a.size
            bl = ublk[ustart[rec_a][:, None] + np.arange(nbg)[None, :]]  # (R, nb) sorted block ids
            members = bmem[bl].reshape(R, nbg * S)
            m = members >= 0
            bm_all.append(members[m])
            bv_all.append(br[sel][m])
            if M is None:
                continue
            ta, tb = np.triu_indices(nbg)
            keys = (bl[:, ta] * NBIG + bl[:, tb]).ravel()
            parts.append((keys, nbg, M[sel] if sel.size < M.shape[0] else M, bl))
        if bm_all:
            p.b_index.append(np.concatenate(bm_all))
            p.b_value.append(np.concatenate(bv_all))
        if not parts:
            return
        # sums per distinct block pair of the chunk (compact), merged into the store by absorb()
        uk, kinv = _unique_inverse(np.concatenate([q[0] for q in parts]))
        tot = np.zeros((uk.size * S, S))
        nout = tot.shape[0]
        k0 = 0
        wide = []  # records of many label blocks: summed batch by batch over the union of their blocks
        for keys, nbg, M, bl in parts:
            R, K = M.shape[0], nbg * S
            if K >= UNION_MIN_K:
                wide.append((kinv[k0: k0 + keys.size].reshape(R, -1), M, bl))
                k0 += keys.size
                continue
            # batches of records along similar tracks (sorted by their blocks): their block pairs
            # repeat, so the sums they are added to stay in the cache
            order = np.lexsort(bl.T[::-1])
            kf = kinv[k0: k0 + keys.size].reshape(R, -1)  # row of each record's pairs in uk
            k0 += keys.size
            # rows of S values of F[r].reshape(nb, S, nb, S) with b >= a, in ascending order (a, s, b)
            ga, gs, gb = np.nonzero(np.arange(nbg)[None, None, :] >= np.arange(nbg)[:, None, None]
                                    + np.zeros((1, S, 1), np.int64))
            pid = ga * nbg - ga * (ga - 1) // 2 + (gb - ga)
            col_in_rec = (ga * S + gs) * nbg + gb
            # F = M Mᵀ in batches small enough to stay in cache until they are picked
            B = min(R, max(1, _F_BATCH_BYTES // (8 * K * K)))
            # the pick matrix: one −1 per selected row of S values of F (its columns); its column pointer is
            # the same pattern for every record, so it is built once and sliced for a shorter last batch
            it = index_type(nout, B * K * nbg)
            picked = np.zeros(K * nbg, it)
            picked[col_in_rec] = 1
            indptr = np.zeros(B * K * nbg + 1, it)
            np.cumsum(np.tile(picked, B), out=indptr[1:])
            # target rows of every record's picked rows of F, in the index type of the pick (one pass per group)
            rows_rec = kf[:, pid].astype(it)
            rows_rec *= S
            rows_rec += gs.astype(it)[None, :]
            for r0 in range(0, R, B):
                r1 = min(R, r0 + B)
                batch = order[r0:r1]
                Mb = M[batch]
                F = self._scratch((r1 - r0) * K * K).reshape(r1 - r0, K, K)
                np.matmul(Mb, np.ascontiguousarray(Mb.transpose(0, 2, 1)), out=F)  # BLAS: contiguous operands
                rows = rows_rec[batch].ravel()
                _add_picked(tot, indptr[: (r1 - r0) * K * nbg + 1], rows, F.reshape(-1, S))
        if wide:
            _add_union_batches(tot, uk, wide, bmem)
        p.pairs.append((uk, tot.reshape(uk.size, S * S)))

    # ---------------------------------------------------------------------------------------- result
    def finish(self) -> GlobalSystem:
        """The global system over the labels seen, sorted by label (CSR, symmetric, both triangles)."""
        self._grow()
        labels = self.registry.labels
        n = labels.size
        S = self.registry.stride or 1
        if self._dblk.shape[0]:
            blocks = np.flatnonzero(np.any(self._dblk != 0, axis=1))
            self.store.merge(blocks * NBIG + blocks, self._dblk[blocks])
            self._dblk = np.zeros((0, S * S))
        # relabel by sorted label
        order = np.argsort(labels)
        newidx = np.empty(n, np.int64)
        newidx[order] = np.arange(n)
        C = self.store.matrix(self.registry.block_members, newidx, n)
        return GlobalSystem(
            labels=labels[order], C=C, b=self.bvec[order], chi2_0=self.chi2_0, ndf=self.ndf,
            entries=self.entries[order], n_records=self.n_records, n_used=self.n_used,
            rejected={k: v for k, v in self.rejected.items() if v}, n_meas=self.n_meas,
            downweighted_fraction=self.dw_sum / self.dw_n if self.dw_n else 0.0,
            bytes_read=self.bytes_read, dw_sum=self.dw_sum, dw_n=self.dw_n,
        )


def _unique_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of the block-pair ``keys`` (a·NBIG + b) and the position of each key among them
    (one stable argsort: cheaper than sorting and then searching every key). Below 65536 blocks the order
    comes from two stable argsorts of 16-bit halves (b, then a), which numpy does by radix sort (~2.5x
    faster than sorting the 64-bit keys)."""
    hi, lo = np.divmod(keys, NBIG)
    if keys.size and int(hi.max()) < 65536 and int(lo.max()) < 65536:
        o = np.argsort(lo.astype(np.uint16), kind="stable")
        o = o[np.argsort(hi.astype(np.uint16)[o], kind="stable")]
    else:
        o = np.argsort(keys, kind="stable")
    sk = keys[o]
    first = np.ones(sk.size, bool)
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    inv = np.empty(sk.size, np.int64)
    inv[o] = np.cumsum(first) - 1
    return sk[first], inv


def _add_union_batches(tot: np.ndarray, uk: np.ndarray, wide: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                       bmem: np.ndarray) -> None:
    """tot[pair rows] −= Σ_r M_r M_rᵀ for records of many label blocks (``wide``: per shape group, each record's
    rows of ``uk`` (its upper block pairs, triu order), M (R, nb·S, q) and its sorted block ids (R, nb));
    ``bmem``: the label members of every block (−1: unused position).

    One record's F = M Mᵀ is (nb·S)² values for only q columns: formed and picked record by record, the picking
    (a scatter of every upper block pair) costs several times the product.  Records sorted by their blocks
    share most of them (a track crosses every CDC layer), so a batch of them is stacked side by side in
    Z (labels of the union of their blocks, Σq), and F = Z Zᵀ is one BLAS product (a ``syrk``)
    whose block pairs are picked once per batch: only the pairs some record of the batch has (the others are
    not in the matrix's pattern).  A record joins a batch while the union stays within :data:`UNION_GROWTH`
    times the records' own sizes (Σ nb²) and Σq within :data:`UNION_COLUMNS`, so records that share no blocks
    are summed one by one."""
    S = bmem.shape[1]
    recs = [(g, i) for g, (_, M, _) in enumerate(wide) for i in range(M.shape[0])]
    nbmax = max(bl.shape[1] for _, _, bl in wide)
    padded = np.full((len(recs), nbmax), np.iinfo(np.int64).max, np.int64)
    r0 = 0
    for *_, bl in wide:
        padded[r0: r0 + bl.shape[0], : bl.shape[1]] = bl
        r0 += bl.shape[0]
    order = np.lexsort(padded.T[::-1])  # records along similar tracks next to each other
    mark = np.zeros(bmem.shape[0], bool)
    pairs = tot.reshape(uk.size, S * S)
    seen = np.zeros(uk.size, bool)
    batch: list[tuple[int, int]] = []
    width = own = 0

    def flush() -> None:
        blocks = np.unique(np.concatenate([wide[g][2][i] for g, i in batch]))
        mark[blocks] = False
        valid = bmem[blocks] >= 0
        nl = int(valid.sum())
        rowid = np.full(valid.shape, -1, np.int64)  # row of Z of every (union block, position)
        rowid[valid] = np.arange(nl)
        Z = np.zeros((width, nl))  # Zᵀ: a record's local columns are rows here
        c0 = 0
        pair_rows = []
        for g, i in batch:
            kf, M, bl = wide[g]
            q = M.shape[2]
            rr = rowid[np.searchsorted(blocks, bl[i])].ravel()
            keep = rr >= 0
            Z[c0: c0 + q, rr[keep]] = M[i][keep].T
            c0 += q
            pair_rows.append(kf[i])
        # numpy's product (numpy's BLAS, under the same thread limits as the rest of the assembly; numpy takes
        # Zᵀ·Z for a syrk and fills the other triangle), plus a zero row and column for the unused positions
        Fx = np.zeros((nl + 1, nl + 1))
        np.matmul(Z.T, Z, out=Fx[:nl, :nl])
        for rows in pair_rows:
            seen[rows] = True
        kp = np.flatnonzero(seen)  # distinct block pairs of the batch
        seen[kp] = False
        rowid[rowid < 0] = nl
        ra = rowid[np.searchsorted(blocks, uk[kp] // NBIG)]  # (pairs, S)
        rb = rowid[np.searchsorted(blocks, uk[kp] % NBIG)]
        pairs[kp] -= Fx.reshape(-1)[(ra * (nl + 1))[:, :, None] + rb[:, None, :]].reshape(kp.size, S * S)

    for r in order.tolist():
        g, i = recs[r]
        bl = wide[g][2][i]
        q = wide[g][1].shape[2]
        nu = int(np.count_nonzero(mark)) + int(np.count_nonzero(~mark[bl])) if batch else bl.size
        if batch and (width + q > UNION_COLUMNS or nu * nu > UNION_GROWTH * (own + bl.size ** 2)):
            flush()
            batch, width, own = [], 0, 0
        batch.append((g, i))
        mark[bl] = True
        width += q
        own += bl.size ** 2
    if batch:
        flush()


def _chi2_3sigma(ndf: np.ndarray) -> np.ndarray:
    """χ² value with upper-tail probability 0.27 % (3σ) for each ndf (≥ 1)."""
    from scipy.stats import chi2

    out = np.full(ndf.shape, np.inf)
    good = ndf > 0
    if good.any():
        u, inv = np.unique(ndf[good], return_inverse=True)
        out[good] = chi2.isf(0.0027, u)[inv]
    return out


def _add_picked(out: np.ndarray, indptr: np.ndarray, rows: np.ndarray, x: np.ndarray) -> None:
    """out[rows[k]] −= x[j] for the k-th entry, column j (CSC pattern ``indptr``, at most one per column)."""
    add_rows(out, indptr, rows, x, -1.0)
