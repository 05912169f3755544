"""The label-block registry of the assembly: global labels -> indices, and labels grouped into blocks.

Labels are indexed in the order they are first seen.  Labels that always occur in the same measurements
(e.g. the 6 rigid-body parameters of a sensor) form a *block* of at most ``stride`` members, found from a
hash of the records they occur in and split into connected components of "appear together in one
measurement"; the global matrix is then accumulated block pair by block pair.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph  # noqa: F401  (sp.csgraph)

from ._arrays import unique_ints
from .mille import MilleRecords

__all__ = ["INTERVAL_LABEL_STRIDE", "LabelRegistry", "interval_label", "split_interval_label"]

#: per-interval labels of time-dependent parameters: label + interval * stride (interval 0 = the label itself);
#: base labels must stay below the stride and per-interval labels below 2**31 (Mille's int32): 214 intervals
INTERVAL_LABEL_STRIDE = 10_000_000

_TABLE_MAX = 1 << 26  # direct label lookup table up to this label value (512 MB at most)


class LabelRegistry:
    """Labels seen so far and their blocks.

    ``labels``: labels in discovery order (index = position); ``label_block`` / ``label_pos``: block of
    each label and its position in the block; ``block_members``: (blocks, stride) label indices, -1 for
    unused positions.  ``stride`` (the block width) is fixed by the first labels seen unless given.
    """

    def __init__(self, stride: int | None = None) -> None:
        self.stride = stride
        self.lab_sorted = np.zeros(0, np.int64)
        self.idx_sorted = np.zeros(0, np.int64)
        self.labels = np.zeros(0, np.int64)  # discovery order
        self._table = np.zeros(0, np.int64)  # label -> index lookup (when labels < _TABLE_MAX)
        self.label_block = np.zeros(0, np.int64)
        self.label_pos = np.zeros(0, np.int64)
        self.block_members = np.zeros((0, stride or 1), np.int64)

    @property
    def n_blocks(self) -> int:
        """Number of label blocks."""
        return int(self.block_members.shape[0])

    def index(self, recs: MilleRecords) -> np.ndarray:
        """Label index of every global entry; registers new labels and their blocks."""
        lab = recs.glb_label
        idx = self.lookup(lab)
        unk = idx < 0
        if not unk.any():
            return idx
        # new labels: local ids 0..k-1 for them, k for every known label (only new ones form blocks)
        lu = lab[unk]
        newlab = unique_ints(lu)
        k = newlab.size
        n0 = self.labels.size
        loc = np.full(lab.size, k, np.int64)
        loc[unk] = np.searchsorted(newlab, lu)
        gidx = n0 + np.arange(k)
        self.labels = np.concatenate([self.labels, newlab])
        allab = np.concatenate([self.lab_sorted, newlab])
        allidx = np.concatenate([self.idx_sorted, gidx])
        o = np.argsort(allab, kind="stable")
        self.lab_sorted, self.idx_sorted = allab[o], allidx[o]
        self._new_blocks(recs, loc, np.arange(k), np.append(gidx, -1))
        top = int(self.lab_sorted[-1]) + 1
        if self.lab_sorted[0] >= 0 and top <= _TABLE_MAX:
            self._table = np.full(top, -1, np.int64)
            self._table[self.lab_sorted] = self.idx_sorted
        else:
            self._table = np.zeros(0, np.int64)
        idx[unk] = gidx[loc[unk]]
        return idx

    def lookup(self, lab: np.ndarray) -> np.ndarray:
        """Index of each label (−1: not seen yet); a direct table when labels are modest integers."""
        if not lab.size:
            return np.zeros(0, np.int64)
        if self._table.size and lab.min() >= 0:
            if lab.max() < self._table.size:
                return self._table[lab]
            idx = np.full(lab.size, -1, np.int64)
            inside = lab < self._table.size
            idx[inside] = self._table[lab[inside]]
            return idx
        n = self.lab_sorted.size
        if not n:
            return np.full(lab.size, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.lab_sorted, lab), n - 1)
        return np.where(self.lab_sorted[pos] == lab, self.idx_sorted[pos], -1)

    def _new_blocks(self, recs: MilleRecords, inv: np.ndarray, new: np.ndarray, uidx: np.ndarray) -> None:
        """Group new labels that occur in exactly the same measurements into blocks."""
        # signature: the set of records a label occurs in (distinct (label, record) pairs, hashed)
        nu = int(inv.max()) + 1 if inv.size else 0
        is_new = np.zeros(nu, bool)
        is_new[new] = True
        sel = is_new[inv.ravel()]  # entries of new labels only (later chunks bring few new labels)
        erec = recs.meas_record()[recs.glb_meas[sel]]
        lr = unique_ints(inv.ravel()[sel].astype(np.int64) * (recs.n_records + 1) + erec)
        lab_u = lr // (recs.n_records + 1)
        m = (lr % (recs.n_records + 1)).astype(np.uint64)
        h1 = ((m * np.uint64(2654435761) + np.uint64(97)) % np.uint64(1 << 31)).astype(np.float64)
        h2 = ((m * np.uint64(40503) + np.uint64(12345)) % np.uint64(1 << 29)).astype(np.float64)
        s1 = np.bincount(lab_u, weights=h1, minlength=nu)[new]
        s2 = np.bincount(lab_u, weights=h2, minlength=nu)[new]
        cnt = np.bincount(lab_u, minlength=nu)[new]
        sig = np.stack([cnt.astype(np.float64), s1, s2], axis=1)
        _, grp = np.unique(sig, axis=0, return_inverse=True)
        grp = grp.ravel()
        # labels of different sensors hit by the very same tracks share a signature: split such groups
        # into connected components of "appear together in one measurement"
        gfull = np.full(nu, -1, np.int64)
        gfull[new] = grp
        e_lab = inv.ravel()
        same_m = recs.glb_meas[1:] == recs.glb_meas[:-1]
        la, lb_ = e_lab[:-1][same_m], e_lab[1:][same_m]
        keep = (gfull[la] >= 0) & (gfull[la] == gfull[lb_])
        pos_new = np.full(nu, -1, np.int64)
        pos_new[new] = np.arange(new.size)
        ia, ib = pos_new[la[keep]], pos_new[lb_[keep]]
        graph = sp.coo_matrix((np.ones(ia.size), (ia, ib)), shape=(new.size, new.size)).tocsr()
        _, comp = sp.csgraph.connected_components(graph, directed=False)
        _, grp = np.unique(np.stack([grp, comp]), axis=1, return_inverse=True)
        grp = grp.ravel()
        order = np.lexsort((new, grp))  # members of a group by label
        g_sorted = grp[order]
        gstart = np.searchsorted(g_sorted, g_sorted)
        rank = np.arange(order.size) - gstart
        if self.stride is None:
            self.stride = int(min(16, max(1, rank.max() + 1 if rank.size else 1)))
            self.block_members = np.zeros((0, self.stride), np.int64)
        S = self.stride
        sub = rank // S  # split groups larger than the stride
        bkey = g_sorted * (order.size + 1) + sub
        ub, binv = np.unique(bkey, return_inverse=True)
        nb0 = self.block_members.shape[0]
        members = np.full((ub.size, S), -1, np.int64)
        members[binv, rank % S] = uidx[new[order]]
        self.block_members = np.concatenate([self.block_members, members])
        lb = np.empty(new.size, np.int64)
        lp = np.empty(new.size, np.int64)
        lb[order] = nb0 + binv
        lp[order] = rank % S
        self.label_block = np.concatenate([self.label_block, lb])
        self.label_pos = np.concatenate([self.label_pos, lp])


def interval_label(label: np.ndarray, interval: np.ndarray) -> np.ndarray:
    """Per-interval label of base ``label`` in ``interval`` (0: the base label itself)."""
    label = np.asarray(label, np.int64)
    interval = np.asarray(interval, np.int64)
    if label.size and (label.min() <= 0 or label.max() >= INTERVAL_LABEL_STRIDE):
        raise ValueError(f"time-dependent base labels must be in 1..{INTERVAL_LABEL_STRIDE - 1}, "
                         f"got {int(label.min())}..{int(label.max())}")
    if interval.size and (interval.min() < 0 or interval.max() >= (2**31 - 1) // INTERVAL_LABEL_STRIDE):
        raise ValueError(f"interval index out of range 0..{(2**31 - 1) // INTERVAL_LABEL_STRIDE - 1}")
    return label + interval * INTERVAL_LABEL_STRIDE


def split_interval_label(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(base label, interval) of per-interval labels (inverse of :func:`interval_label`)."""
    label = np.asarray(label, np.int64)
    return label % INTERVAL_LABEL_STRIDE, label // INTERVAL_LABEL_STRIDE
