"""Small array helpers shared by the alignment modules."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["index_type", "outer_segsum", "pairs_within", "unique_ints"]


def unique_ints(x: np.ndarray, stable: bool = True) -> np.ndarray:
    """Sorted distinct values of an integer array.

    Sort-based: ``np.unique`` without ``return_inverse`` takes a hash path in numpy 2.4 that is ~15x slower
    on these arrays. ``stable`` (timsort) is the faster choice for the run-structured keys of the assembly.
    """
    s = np.sort(x, kind="stable" if stable else "quicksort")
    if s.size < 2:
        return s
    keep = np.empty(s.size, bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def index_type(*sizes: int) -> type[np.signedinteger]:
    """int32 sparse indices when every size fits (scipy would otherwise check and convert int64 ones)."""
    return np.int32 if max(sizes) < 2**31 - 1 else np.int64


def outer_segsum(seg: np.ndarray, left: np.ndarray, right: np.ndarray, nseg: int) -> np.ndarray:
    """Σ over rows m with seg[m] = k of left[m] ⊗ right[m] -> (nseg, L·W), without forming the outer products.

    A sparse (nseg·L, n) matrix holding left[m, i] at row seg[m]·L + i of column m, times ``right`` (n, W).
    """
    n, L = left.shape
    if nseg == 0:  # (reshape cannot infer a width from an empty product)
        return np.zeros((0, L * right.shape[1]))
    it = index_type(nseg * L, n * L)
    indptr = np.arange(0, n * L + 1, L, dtype=it)
    idx = (seg.astype(it, copy=False)[:, None] * L + np.arange(L, dtype=it)[None, :]).ravel()
    A = sp.csc_matrix((np.ascontiguousarray(left).ravel(), idx, indptr), shape=(nseg * L, n))
    return np.asarray(A @ right).reshape(nseg, -1)


def pairs_within(seg_id: np.ndarray, seg_id2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) of entries with the same segment id (entries sorted by id).

    With ``seg_id2`` pairs entries of the first list with entries of the second list of the same id.
    """
    if seg_id2 is None:
        seg_id2 = seg_id
    nseg = int(max(seg_id.max(initial=-1), seg_id2.max(initial=-1))) + 1
    c2 = np.bincount(seg_id2, minlength=nseg)
    s2 = np.zeros(nseg + 1, np.int64)
    np.cumsum(c2, out=s2[1:])
    reps = c2[seg_id]
    i = np.repeat(np.arange(seg_id.size), reps)
    base = np.repeat(np.cumsum(reps) - reps, reps)
    j = s2[seg_id][i] + (np.arange(i.size) - base)
    return i, j
