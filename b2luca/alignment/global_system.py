"""Global accumulation of the assembly: block-pair sums of the normal equations, and the system they form.

The global matrix is stored by label *blocks* (see :mod:`b2luca.alignment.labels`): one row of S·S
values per block pair (a, b), a <= b, in an append-only value store with a sorted key index
(key = a·2³¹ + b).  :meth:`BlockPairStore.matrix` expands the pairs into the symmetric CSR matrix of
:class:`GlobalSystem`; :func:`merge_systems` sums systems assembled from disjoint record sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ._arrays import index_type, unique_ints

__all__ = ["NBIG", "BlockPairStore", "GlobalSystem", "add_rows", "merge_systems"]

#: block-pair key = a * NBIG + b
NBIG = np.int64(1 << 31)


@dataclass
class GlobalSystem:
    """C·Δg = b over ``labels`` (sorted), plus the χ² pieces: χ²(Δg) = chi2_0 − 2bᵀΔg + ΔgᵀCΔg."""

    labels: np.ndarray
    C: sp.csr_matrix
    b: np.ndarray
    chi2_0: float
    ndf: int
    entries: np.ndarray  # measurements per label (accepted records)
    n_records: int
    n_used: int
    rejected: dict[str, int] = field(default_factory=dict)
    n_meas: int = 0
    downweighted_fraction: float = 0.0
    bytes_read: int = 0
    dw_sum: float = 0.0  # Σ (1 − weight factor) over down-weighted measurements
    dw_n: int = 0  # measurements that went through down-weighting


class BlockPairStore:
    """Sums of the global matrix per block pair: ``pair_keys`` (sorted) -> rows ``pair_slot`` of ``vals``
    (``width`` = S·S values per row)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.pair_keys = np.zeros(0, np.int64)  # sorted block-pair keys
        self.pair_slot = np.zeros(0, np.int64)  # their rows in the value store
        self.vals = np.zeros((0, width))
        self.nslots = 0

    def merge(self, uk: np.ndarray, sums: np.ndarray) -> None:
        """Add per-chunk block-pair sums; values live in an append-only store, keys in a sorted index."""
        n_old = self.pair_keys.size
        if n_old:
            pos = np.searchsorted(self.pair_keys, uk)
            pc = np.minimum(pos, n_old - 1)
            found = self.pair_keys[pc] == uk
            # vals[slot of key k] += sums[k] for the keys found, in one pass (no gathered copies)
            it = index_type(self.vals.shape[0], uk.size)
            indptr = np.zeros(uk.size + 1, it)
            np.cumsum(found, out=indptr[1:])
            add_rows(self.vals, indptr, self.pair_slot[pc[found]].astype(it, copy=False), sums, 1.0)
        else:
            found = np.zeros(uk.size, bool)
        if found.all():
            return
        newk = uk[~found]
        k = newk.size
        if self.nslots + k > self.vals.shape[0]:
            cap = max(int(1.25 * self.vals.shape[0]), self.nslots + k, 1024)  # 1.25: little unused capacity
            grown = np.zeros((cap, sums.shape[1]))
            grown[: self.nslots] = self.vals[: self.nslots]
            self.vals = grown
        slots = self.nslots + np.arange(k)
        self.vals[slots] = sums[~found]
        self.nslots += k
        ins = np.searchsorted(self.pair_keys, newk)  # both sorted: a linear merge, no re-sort
        self.pair_keys = np.insert(self.pair_keys, ins, newk)
        self.pair_slot = np.insert(self.pair_slot, ins, slots)

    @property
    def pair_vals(self) -> np.ndarray:
        """Block-pair sums in the order of ``pair_keys``."""
        return self.vals[self.pair_slot]

    def matrix(self, block_members: np.ndarray, newidx: np.ndarray, n: int) -> sp.csr_matrix:
        """The symmetric (n, n) matrix (both triangles, canonical CSR) of the stored block pairs; label index
        i of a block member becomes row/column ``newidx[i]``.

        The CSR arrays are allocated once (row counts from the block sizes) and filled in batches of block
        pairs, so the peak is the store plus the CSR (12 bytes per entry with 32-bit indices), not a
        coordinate copy of the whole matrix.
        """
        S = block_members.shape[1]
        nblk = block_members.shape[0]
        mem = np.where(block_members >= 0, newidx[np.maximum(block_members, 0)], -1)
        bi = self.pair_keys // NBIG
        bj = self.pair_keys % NBIG
        nv = (mem >= 0).sum(axis=1)
        off = bi != bj
        per_row = (np.bincount(bi, weights=nv[bj], minlength=nblk)
                   + np.bincount(bj[off], weights=nv[bi[off]], minlength=nblk)).astype(np.int64)
        count = np.zeros(n, np.int64)
        valid = mem >= 0
        count[mem[valid]] = np.broadcast_to(per_row[:, None], mem.shape)[valid]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(count, out=indptr[1:])
        it = index_type(n, int(indptr[-1]))
        indices = np.empty(int(indptr[-1]), it)
        data = np.empty(int(indptr[-1]))
        fill = indptr[:-1].copy()  # next free slot of each row
        mem = mem.astype(it)
        for s0 in range(0, bi.size, _MATRIX_BATCH):
            a, b = bi[s0: s0 + _MATRIX_BATCH], bj[s0: s0 + _MATRIX_BATCH]
            vals = self.vals[self.pair_slot[s0: s0 + _MATRIX_BATCH]].reshape(-1, S, S)
            diag = a == b  # diagonal blocks: symmetric up to round-off, made exactly symmetric
            vals[diag] = 0.5 * (vals[diag] + vals[diag].transpose(0, 2, 1))
            ra = np.broadcast_to(mem[a][:, :, None], vals.shape)
            cb = np.broadcast_to(mem[b][:, None, :], vals.shape)
            m = (ra >= 0) & (cb >= 0)
            mo = m & ~diag[:, None, None]
            r = np.concatenate([ra[m], cb[mo]])
            c = np.concatenate([cb[m], ra[mo]])
            v = np.concatenate([vals[m], vals[mo]])
            o = np.argsort(r, kind="stable")
            r, c, v = r[o], c[o], v[o]
            start = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
            cnt = np.diff(np.append(start, r.size))
            rank = np.arange(r.size) - np.repeat(start, cnt)
            dest = fill[r] + rank
            fill[r[start]] += cnt
            indices[dest] = c
            data[dest] = v
        C = sp.csr_matrix((data, indices, indptr.astype(it, copy=False)), shape=(n, n))
        C.sort_indices()  # in place; each label is in one block, so there are no duplicates
        return C


_MATRIX_BATCH = 1 << 14  # block pairs per batch of BlockPairStore.matrix (~1M entries)


def merge_systems(parts: list[GlobalSystem]) -> GlobalSystem:
    """Sum the normal equations of disjoint record sets (e.g. assembled by different threads).

    The parts are added in the given order, so a fixed order gives bit-identical results.
    """
    if len(parts) == 1:
        return parts[0]
    labels = unique_ints(np.concatenate([p.labels for p in parts]))
    n = labels.size
    C = sp.csr_matrix((n, n))
    b = np.zeros(n)
    entries = np.zeros(n, np.int64)
    rejected: dict[str, int] = {}
    for p in parts:
        idx = np.searchsorted(labels, p.labels)
        if p.labels.size == n:
            Cp = p.C
        else:
            P = sp.csr_matrix((np.ones(idx.size), (idx, np.arange(idx.size))), shape=(n, idx.size))
            Cp = (P @ p.C @ P.T).tocsr()
        C = C + Cp
        b[idx] += p.b
        entries[idx] += p.entries
        for k, v in p.rejected.items():
            rejected[k] = rejected.get(k, 0) + v
    dw_sum = sum(p.dw_sum for p in parts)
    dw_n = sum(p.dw_n for p in parts)
    C = C.tocsr()
    C.sort_indices()
    return GlobalSystem(
        labels=labels, C=C, b=b, chi2_0=sum(p.chi2_0 for p in parts), ndf=sum(p.ndf for p in parts),
        entries=entries, n_records=sum(p.n_records for p in parts), n_used=sum(p.n_used for p in parts),
        rejected=rejected, n_meas=sum(p.n_meas for p in parts),
        downweighted_fraction=dw_sum / dw_n if dw_n else 0.0, bytes_read=sum(p.bytes_read for p in parts),
        dw_sum=dw_sum, dw_n=dw_n,
    )


try:  # scipy's compiled y += A x (CSC A, several vectors); public `A @ x` would allocate and zero a new y
    # (private API, present in every scipy since sparsetools; the public product is the fallback)
    from scipy.sparse._sparsetools import csc_matvecs as _csc_matvecs
except ImportError:  # pragma: no cover - private scipy API; fall back to the public product
    _csc_matvecs = None

_SIGNS = {1.0: np.ones(1 << 16), -1.0: np.full(1 << 16, -1.0)}


def add_rows(out: np.ndarray, indptr: np.ndarray, rows: np.ndarray, x: np.ndarray, sign: float) -> None:
    """out[rows[k]] += sign · x[j] for the k-th entry, in column j of the CSC pattern ``indptr`` (at most one
    entry per column: the columns pick rows of ``x``), in place; ``sign`` is +1 or −1."""
    if _csc_matvecs is None or not out.flags.c_contiguous:
        A = sp.csc_matrix((np.full(rows.size, sign), rows, indptr), shape=(out.shape[0], x.shape[0]))
        out += A @ x
        return
    coef = _SIGNS[sign] if _SIGNS[sign].size >= rows.size else np.full(rows.size, sign)
    _csc_matvecs(out.shape[0], x.shape[0], x.shape[1], indptr, rows, coef[: rows.size],
                 np.ascontiguousarray(x, np.float64).ravel(), out.reshape(-1))
