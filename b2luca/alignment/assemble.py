"""Vectorised assembly of the global normal equations from Mille records.

Per record (track) the local parameters are eliminated exactly (Schur complement)::

    Γ = Σ w a aᵀ,  β = Σ w a y,  H = Σ w d aᵀ,  D = Σ w d dᵀ,  γ = Σ w d y
    C_r = D − H Γ⁻¹ Hᵀ,  b_r = γ − H Γ⁻¹ β,  χ²_r(Δg) = yᵀWy − βᵀΓ⁻¹β − 2 b_rᵀΔg + ΔgᵀC_rΔg

All sums are scatter-adds (``np.bincount``) of per-measurement entry pairs into per-record dense arrays;
records are grouped by shape (number of local parameters, number of label blocks) and the Schur complements
of a whole group are computed with batched numpy linear algebra. The global matrix is accumulated by label
*blocks* (labels that always appear in the same measurements, e.g. the 6 rigid-body parameters of a sensor,
found from a hash of the measurements they occur in), so each record contributes a few dense block pairs,
summed per chunk with one sparse x dense product. There is no Python loop over records anywhere.

Fast path (every measurement touches one label block, the usual case): the per-record sums are sparse x dense
products that never form per-measurement outer products (``_outer_segsum``); D is summed per global block
directly; F = M Mᵀ (M = H Γ^-½, Γ factorised by a Cholesky vectorised over the records) is formed in
cache-sized batches of records sorted by their blocks, and its upper block pairs are added in place to the
block-pair sums by a −1 sparse pattern whose columns pick rows of F (``_add_picked``), so no per-record
block-pair array is gathered or copied. With few blocks a dense pair table sends the sums straight into the
store; otherwise they are summed per distinct pair of the chunk and merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph  # noqa: F401  (sp.csgraph)

from ._arrays import unique_ints
from .mille import MilleRecords, RawChunk

__all__ = ["Assembler", "GlobalSystem", "DownWeighting", "merge_systems"]

_NBIG = np.int64(1 << 31)
_F_BATCH_BYTES = 1 << 20  # records per F = M Mᵀ batch: about this many bytes of F (fits the L2 cache)
_PAIR_TABLE_BLOCKS = 1500  # up to this many label blocks, a dense block-pair table (<= 9 MB) finds store rows
_TABLE_MAX = 1 << 26  # direct label lookup table up to this label value (512 MB at most)
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


class Assembler:
    """Streams record chunks into block-sparse normal equations.

    ``labels_corr``: current global corrections (label -> value) used to form residuals in later
    iterations (``None`` = all zero).
    """

    def __init__(self, corrections: dict[int, float] | tuple[np.ndarray, np.ndarray] | None = None,
                 downweight: DownWeighting | None = None, stride: int | None = None):
        self.dw = downweight or DownWeighting()
        self.stride = stride
        self.lab_sorted = np.zeros(0, np.int64)
        self.idx_sorted = np.zeros(0, np.int64)
        self.labels = np.zeros(0, np.int64)  # discovery order
        self._table = np.zeros(0, np.int64)  # label -> index lookup (when labels < _TABLE_MAX)
        self.label_block = np.zeros(0, np.int64)
        self.label_pos = np.zeros(0, np.int64)
        self.block_members = np.zeros((0, 1), np.int64)
        self.pair_keys = np.zeros(0, np.int64)  # sorted block-pair keys
        self.pair_slot = np.zeros(0, np.int64)  # their rows in the value store
        self._vals = np.zeros((0, 1))
        self._nslots = 0
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
        self._buf = np.zeros(0)
        self._dblk = np.zeros((0, 1))  # Σ w d dᵀ per label block (single-block measurements)
        self._ptab = np.zeros(0, np.int32)  # block pair -> store row (see _table_slots)
        self._ptab_n = -1
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
        """A reused float64 work buffer of at least ``n`` values (valid until the next call)."""
        if self._buf.size < n:
            self._buf = np.empty(max(n, int(1.25 * self._buf.size)))
        return self._buf[:n]

    # ---------------------------------------------------------------------------------- labels & blocks
    def _index_labels(self, recs: MilleRecords) -> np.ndarray:
        """Label index of every global entry; registers new labels and their blocks."""
        lab = recs.glb_label
        idx = self._lookup(lab)
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
        self.bvec = np.concatenate([self.bvec, np.zeros(k)])
        self.entries = np.concatenate([self.entries, np.zeros(k, np.int64)])
        top = int(self.lab_sorted[-1]) + 1
        if self.lab_sorted[0] >= 0 and top <= _TABLE_MAX:
            self._table = np.full(top, -1, np.int64)
            self._table[self.lab_sorted] = self.idx_sorted
        else:
            self._table = np.zeros(0, np.int64)
        idx[unk] = gidx[loc[unk]]
        return idx

    def _lookup(self, lab: np.ndarray) -> np.ndarray:
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
            self._vals = np.zeros((0, self.stride * self.stride))
            self._dblk = np.zeros((0, self.stride * self.stride))
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

    # ---------------------------------------------------------------------------------------- chunks
    def add(self, recs: MilleRecords | RawChunk) -> None:
        """Eliminate the local parameters of all records in ``recs`` and accumulate."""
        if isinstance(recs, RawChunk):
            recs = recs.decode()
        nrec = recs.n_records
        self.n_records += nrec + recs.n_nonfinite  # records with NaN/inf were dropped by the decoder
        self.rejected["nonfinite"] = self.rejected.get("nonfinite", 0) + recs.n_nonfinite
        self.bytes_read += recs.nbytes
        if nrec == 0:
            return
        if recs.glb_meas.size > 1 and not recs.meas_sorted and np.any(np.diff(recs.glb_meas) < 0):
            o = np.argsort(recs.glb_meas, kind="stable")
            recs.glb_meas, recs.glb_label, recs.glb_der = recs.glb_meas[o], recs.glb_label[o], recs.glb_der[o]
        if recs.loc_meas.size > 1 and not recs.meas_sorted and np.any(np.diff(recs.loc_meas) < 0):
            o = np.argsort(recs.loc_meas, kind="stable")
            recs.loc_meas, recs.loc_index, recs.loc_der = recs.loc_meas[o], recs.loc_index[o], recs.loc_der[o]
        lidx = self._index_labels(recs)
        S = self.stride
        meas_rec = recs.meas_record()
        # residual w.r.t. the current corrections
        y = recs.value.copy()
        if self.corr_labels.size:
            pos = np.searchsorted(self.corr_labels, recs.glb_label)
            pc = np.minimum(pos, self.corr_labels.size - 1)
            cv = np.where(self.corr_labels[pc] == recs.glb_label, self.corr_values[pc], 0.0)
            y -= np.bincount(recs.glb_meas, weights=recs.glb_der * cv, minlength=recs.n_meas)
        w = 1.0 / recs.sigma ** 2
        nloc = np.zeros(nrec, np.int64)
        if recs.loc_index.size:
            # highest local index per record: entries are in measurement (so record) order
            lrec = meas_rec[recs.loc_meas]
            first = np.flatnonzero(np.r_[True, lrec[1:] != lrec[:-1]])
            nloc[lrec[first]] = np.maximum.reduceat(recs.loc_index, first).astype(np.int64) + 1
        # record-block structure
        blk = self.label_block[lidx]
        erec = meas_rec[recs.glb_meas]
        NB = np.int64(self.block_members.shape[0])
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
        eslot = urank[einv.ravel()] * S + self.label_pos[lidx]
        has_glb = nb > 0
        self.rejected["no_globals"] += int((~has_glb).sum())
        K = nb * S
        q = nloc
        nmeas_r = np.diff(recs.rec_ptr)

        def system(wm: np.ndarray):
            return _local_systems(recs, y, wm, meas_rec, eslot, K, q, S)

        sysd = system(w)
        chi2_r, ok = sysd["chi2"], sysd["ok"]
        frac_dw = np.zeros(nrec)
        if self.dw.iterations > 0:
            wm = w
            for it in range(self.dw.iterations):
                resid = _residuals(recs, y, sysd, meas_rec)
                z = np.abs(resid) * np.sqrt(w)
                if it == 0:
                    f = np.where(z > HUBER_C, HUBER_C / np.maximum(z, 1e-300), 1.0)
                else:
                    f = 1.0 / (1.0 + (z / CAUCHY_C) ** 2)
                wm = w * f
                sysd = system(wm)
            chi2_r, ok = sysd["chi2"], sysd["ok"]
            fsum = np.bincount(meas_rec, weights=wm / w, minlength=nrec)
            frac_dw = 1.0 - fsum / np.maximum(nmeas_r, 1)
            self.dw_sum += float((nmeas_r - fsum).sum())
            self.dw_n += int(nmeas_r.sum())
        ndf_r = nmeas_r - q
        accept = ok & has_glb
        self.rejected["singular"] += int((~ok & has_glb).sum())
        if self.dw.hugecut is not None:
            bad = accept & (ndf_r > 0) & (chi2_r / np.maximum(ndf_r, 1) > self.dw.hugecut)
            self.rejected["hugecut"] += int(bad.sum())
            accept &= ~bad
        if self.dw.chi2_factor is not None and self.dw.chi2_factor > 0:
            lim = self.dw.chi2_factor * _chi2_3sigma(ndf_r)
            bad = accept & (ndf_r > 0) & (chi2_r > lim)
            self.rejected["chiscut"] += int(bad.sum())
            accept &= ~bad
        if self.dw.iterations > 0 and self.dw.dwfractioncut > 0:
            bad = accept & (frac_dw > self.dw.dwfractioncut)
            self.rejected["dwfraction"] += int(bad.sum())
            accept &= ~bad
        self.n_used += int(accept.sum())
        self.n_meas += int(nmeas_r[accept].sum())
        self.chi2_0 += float(chi2_r[accept].sum())
        self.ndf += int(ndf_r[accept].sum())
        acc_e = accept[erec]
        self.entries += np.bincount(lidx[acc_e], minlength=self.entries.size)
        # accumulate the block pairs of accepted records, group by group
        # the per-record block pairs stay in place in Pbuf (rows of S·S values): only their row numbers and
        # block-pair keys are gathered, and one sparse (0/1) x dense product sums them per key
        keys_all, rows_all, bm_all, bv_all = [], [], [], []
        poff = sysd["Poff"]
        for g in sysd["groups"]:
            rec, br, nbg = g["rec"], g["b"], g["nb"]
            a = accept[rec]
            if not a.any() or nbg == 0:
                continue
            if not a.all():
                rec, br = rec[a], br[a]
            R = rec.size
            bl = ublk[ustart[rec][:, None] + np.arange(nbg)[None, :]]  # (R, nb) sorted block ids
            ta, tb = np.triu_indices(nbg)
            keys_all.append((bl[:, ta] * _NBIG + bl[:, tb]).ravel())
            rows_all.append((poff[rec][:, None] + np.arange(ta.size)[None, :]).ravel())
            members = self.block_members[bl].reshape(R, nbg * S)
            m = members >= 0
            bm_all.append(members[m])
            bv_all.append(br[m])
        if sysd["Pbuf"] is None:
            self._accumulate_fd(sysd, accept, ublk, ustart, nb)
            return
        if keys_all:
            bm = np.concatenate(bm_all)
            self.bvec += np.bincount(bm, weights=np.concatenate(bv_all), minlength=self.bvec.size)
            keys = np.concatenate(keys_all)
            rows = np.concatenate(rows_all)
            o = np.argsort(keys, kind="stable")
            sk = keys[o]
            first = np.ones(sk.size, bool)
            np.not_equal(sk[1:], sk[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            uk = sk[starts]
            indptr = np.append(starts, sk.size).astype(np.int64)
            Pv = sysd["Pbuf"].reshape(-1, S * S)
            A = sp.csr_matrix((np.ones(sk.size), rows[o], indptr), shape=(uk.size, Pv.shape[0]))
            self._merge(uk, np.asarray(A @ Pv))

    def _accumulate_fd(self, sysd: dict, accept: np.ndarray, ublk: np.ndarray, ustart: np.ndarray,
                       nb: np.ndarray) -> None:
        """Single-block measurements: C_r = D_r − F_r, D summed per global block, F = M Mᵀ per shape group.

        Both are summed per block pair by sparse (±1) x dense products whose column indices pick the upper
        block pairs straight out of F viewed as rows of S values (no gather copy).
        """
        S = self.stride
        nrec = accept.size
        NBIG = _NBIG
        # D: per-measurement outer products of accepted records, keyed by the measurement's block (diagonal pair)
        rb_rec = np.repeat(np.arange(nrec), nb)
        rbm = sysd["rb_m"]
        m_sel = np.flatnonzero(accept[rb_rec[rbm]])
        bd = ublk[rbm[m_sel]]
        # D block (s, :) += w d_s dᵀ, summed per global block (a diagonal block pair), added in finish()
        nblk = self.block_members.shape[0]
        if self._dblk.shape[0] < nblk:
            self._dblk = np.concatenate([self._dblk, np.zeros((nblk - self._dblk.shape[0], S * S))])
        self._dblk[:nblk] += _outer_segsum(bd, sysd["wd"][m_sel], sysd["d"][m_sel], nblk)
        parts = []  # (upper block-pair keys (R·n_pairs,), nb, M of the accepted records, their block ids)
        bm_all, bv_all = [], []
        for g in sysd["groups"]:
            rec, br, nbg, M = g["rec"], g["b"], g["nb"], g["M"]
            a = accept[rec]
            if not a.any() or nbg == 0:
                continue
            sel = np.flatnonzero(a)
            rec_a = rec[sel]
            R = rec_a.size
            bl = ublk[ustart[rec_a][:, None] + np.arange(nbg)[None, :]]  # (R, nb) sorted block ids
            members = self.block_members[bl].reshape(R, nbg * S)
            m = members >= 0
            bm_all.append(members[m])
            bv_all.append(br[sel][m])
            if M is None:
                continue
            ta, tb = np.triu_indices(nbg)
            keys = (bl[:, ta] * NBIG + bl[:, tb]).ravel()
            parts.append((keys, nbg, M[sel] if sel.size < M.shape[0] else M, bl))
        if bm_all:
            self.bvec += np.bincount(np.concatenate(bm_all), weights=np.concatenate(bv_all),
                                     minlength=self.bvec.size)
        if not parts:
            return
        allkeys = np.concatenate([p[0] for p in parts])
        direct = self.block_members.shape[0] <= _PAIR_TABLE_BLOCKS
        if direct:
            # few blocks: block pair -> store row by a direct table, summed straight into the store
            slots = self._table_slots(allkeys)
            tot = self._vals.reshape(-1, S)
        else:
            # many blocks: sum per distinct block pair of the chunk, then merge into the store
            uk = unique_ints(allkeys)
            tot = np.zeros((uk.size * S, S))
        nout = tot.shape[0]
        k0 = 0
        for keys, nbg, M, bl in parts:
            R, K = M.shape[0], nbg * S
            # batches of records along similar tracks (sorted by their blocks): their block pairs
            # repeat, so the sums they are added to stay in the cache
            order = np.lexsort(bl.T[::-1])
            kf = (slots[k0: k0 + keys.size] if direct else np.searchsorted(uk, keys)).reshape(R, -1)
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
            it = _index_type(nout, B * K * nbg)
            picked = np.zeros(K * nbg, it)
            picked[col_in_rec] = 1
            indptr = np.zeros(B * K * nbg + 1, it)
            np.cumsum(np.tile(picked, B), out=indptr[1:])
            for r0 in range(0, R, B):
                r1 = min(R, r0 + B)
                batch = order[r0:r1]
                Mb = M[batch]
                F = self._scratch((r1 - r0) * K * K).reshape(r1 - r0, K, K)
                np.matmul(Mb, np.ascontiguousarray(Mb.transpose(0, 2, 1)), out=F)  # BLAS: contiguous operands
                rows = (kf[batch][:, pid] * S + gs[None, :]).ravel().astype(it, copy=False)
                _add_picked(tot, indptr[: (r1 - r0) * K * nbg + 1], rows, F.reshape(-1, S))
        if not direct:
            self._merge(uk, tot.reshape(uk.size, S * S))

    def _table_slots(self, keys: np.ndarray) -> np.ndarray:
        """Store rows of block-pair ``keys`` through a dense (blocks x blocks) table; new pairs get zero rows."""
        nblk = self.block_members.shape[0]
        if self._ptab_n != nblk:  # blocks were added: rebuild the table from the sorted index
            self._ptab = np.full(nblk * nblk, -1, np.int32)
            self._ptab[(self.pair_keys // _NBIG) * nblk + self.pair_keys % _NBIG] = self.pair_slot
            self._ptab_n = nblk
        idx = (keys // _NBIG) * nblk + keys % _NBIG
        out = self._ptab[idx]
        miss = out < 0
        if miss.any():
            newk = unique_ints(keys[miss])
            self._merge(newk, np.zeros((newk.size, self._vals.shape[1])))
            self._ptab[(newk // _NBIG) * nblk + newk % _NBIG] = self.pair_slot[np.searchsorted(self.pair_keys, newk)]
            out = self._ptab[idx]
        return out

    def _merge(self, uk: np.ndarray, sums: np.ndarray) -> None:
        """Add per-chunk block-pair sums; values live in an append-only store, keys in a sorted index."""
        n_old = self.pair_keys.size
        if n_old:
            pos = np.searchsorted(self.pair_keys, uk)
            pc = np.minimum(pos, n_old - 1)
            found = self.pair_keys[pc] == uk
            self._vals[self.pair_slot[pc[found]]] += sums[found]
        else:
            found = np.zeros(uk.size, bool)
        if found.all():
            return
        newk = uk[~found]
        k = newk.size
        if self._nslots + k > self._vals.shape[0]:
            cap = max(2 * self._vals.shape[0], self._nslots + k, 1024)
            grown = np.zeros((cap, sums.shape[1]))
            grown[: self._nslots] = self._vals[: self._nslots]
            self._vals = grown
        slots = self._nslots + np.arange(k)
        self._vals[slots] = sums[~found]
        self._nslots += k
        ins = np.searchsorted(self.pair_keys, newk)  # both sorted: a linear merge, no re-sort
        self.pair_keys = np.insert(self.pair_keys, ins, newk)
        self.pair_slot = np.insert(self.pair_slot, ins, slots)

    @property
    def pair_vals(self) -> np.ndarray:
        """Block-pair sums in the order of ``pair_keys``."""
        return self._vals[self.pair_slot]

    def add_all(self, chunks: Iterable[MilleRecords]) -> None:
        for c in chunks:
            self.add(c)

    # ---------------------------------------------------------------------------------------- result
    def finish(self) -> GlobalSystem:
        """The global system over the labels seen, sorted by label (CSR, symmetric, both triangles)."""
        n = self.labels.size
        S = self.stride or 1
        if self._dblk.shape[0]:
            blocks = np.flatnonzero(np.any(self._dblk != 0, axis=1))
            self._merge(blocks * _NBIG + blocks, self._dblk[blocks])
            self._dblk = np.zeros((0, S * S))
        bi = self.pair_keys // _NBIG
        bj = self.pair_keys % _NBIG
        rows = self.block_members[bi][:, :, None] * np.ones(S, np.int64)[None, None, :]
        cols = self.block_members[bj][:, None, :] * np.ones(S, np.int64)[None, :, None]
        vals = self.pair_vals.reshape(-1, S, S)
        diag = bi == bj  # diagonal blocks: symmetric up to round-off, made exactly symmetric
        vals[diag] = 0.5 * (vals[diag] + vals[diag].transpose(0, 2, 1))
        m = (rows >= 0) & (cols >= 0)
        off = (bi != bj)[:, None, None] & m
        r = np.concatenate([rows[m], cols[off]])
        c = np.concatenate([cols[m], rows[off]])
        v = np.concatenate([vals[m], vals[off]])
        # relabel by sorted label
        order = np.argsort(self.labels)
        newidx = np.empty(n, np.int64)
        newidx[order] = np.arange(n)
        C = sp.csr_matrix((v, (newidx[r], newidx[c])), shape=(n, n))  # each label in one block: no duplicates
        return GlobalSystem(
            labels=self.labels[order], C=C, b=self.bvec[order], chi2_0=self.chi2_0, ndf=self.ndf,
            entries=self.entries[order], n_records=self.n_records, n_used=self.n_used,
            rejected={k: v for k, v in self.rejected.items() if v}, n_meas=self.n_meas,
            downweighted_fraction=self.dw_sum / self.dw_n if self.dw_n else 0.0,
            bytes_read=self.bytes_read, dw_sum=self.dw_sum, dw_n=self.dw_n,
        )


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


def _chi2_3sigma(ndf: np.ndarray) -> np.ndarray:
    """χ² value with upper-tail probability 0.27 % (3σ) for each ndf (≥ 1)."""
    from scipy.stats import chi2

    out = np.full(ndf.shape, np.inf)
    good = ndf > 0
    if good.any():
        u, inv = np.unique(ndf[good], return_inverse=True)
        out[good] = chi2.isf(0.0027, u)[inv]
    return out


try:  # scipy's compiled y += A x (CSC A, several vectors); public `A @ x` would allocate and zero a new y
    # (private API, present in every scipy since sparsetools; the public product is the fallback)
    from scipy.sparse._sparsetools import csc_matvecs as _csc_matvecs
except ImportError:  # pragma: no cover - private scipy API; fall back to the public product
    _csc_matvecs = None


def _add_picked(out: np.ndarray, indptr: np.ndarray, rows: np.ndarray, x: np.ndarray) -> None:
    """out[rows[k]] −= x[j] for the k-th entry, column j (CSC pattern ``indptr``, at most one per column)."""
    if _csc_matvecs is None or not out.flags.c_contiguous:
        out += sp.csc_matrix((np.full(rows.size, -1.0), rows, indptr), shape=(out.shape[0], x.shape[0])) @ x
        return
    ones = _MINUS_ONES if _MINUS_ONES.size >= rows.size else np.full(rows.size, -1.0)
    _csc_matvecs(out.shape[0], x.shape[0], x.shape[1], indptr, rows, ones[: rows.size],
                 np.ascontiguousarray(x, np.float64).ravel(), out.reshape(-1))


_MINUS_ONES = np.full(1 << 16, -1.0)


def _index_type(*sizes: int) -> type:
    """int32 sparse indices when every size fits (scipy would otherwise check and convert int64 ones)."""
    return np.int32 if max(sizes) < 2**31 - 1 else np.int64


def _outer_segsum(seg: np.ndarray, left: np.ndarray, right: np.ndarray, nseg: int) -> np.ndarray:
    """Σ over rows m with seg[m] = k of left[m] ⊗ right[m] -> (nseg, L·W), without forming the outer products.

    A sparse (nseg·L, n) matrix holding left[m, i] at row seg[m]·L + i of column m, times ``right`` (n, W).
    """
    n, L = left.shape
    it = _index_type(nseg * L, n * L)
    indptr = np.arange(0, n * L + 1, L, dtype=it)
    idx = (seg.astype(it, copy=False)[:, None] * L + np.arange(L, dtype=it)[None, :]).ravel()
    A = sp.csc_matrix((np.ascontiguousarray(left).ravel(), idx, indptr), shape=(nseg * L, n))
    return np.asarray(A @ right).reshape(nseg, -1)


def _pairs_within(seg_id: np.ndarray, seg_id2: np.ndarray | None = None):
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


def _local_systems(recs: MilleRecords, y: np.ndarray, w: np.ndarray, meas_rec: np.ndarray,
                   eslot: np.ndarray, K: np.ndarray, q: np.ndarray, S: int) -> dict:
    """Per-record local fits and Schur complements, batched by shape (number of blocks, q).

    The Schur complement C_r = D − M Mᵀ (M = H V Λ^-1/2 from Γ = V Λ Vᵀ) is produced directly in
    *upper block-pair* layout: (R, n_pairs, S, S) for the pairs a <= b of the record's label blocks.
    """
    nrec = recs.n_records
    gm, lm = recs.glb_meas, recs.loc_meas
    li = recs.loc_index.astype(np.int64)
    nb = K // S
    npair = nb * (nb + 1) // 2
    gkey = q * (int(nb.max(initial=0)) + 1) + nb
    order = np.argsort(gkey, kind="stable")
    S2 = S * S
    offs = {}
    for name, sz in (("P", npair * S2), ("H", K * q), ("G", q * q), ("K", K), ("q", q)):
        o = np.zeros(nrec, np.int64)
        srt = sz[order]
        o[order] = np.cumsum(srt) - srt
        offs[name] = (o, int(sz.sum()))
    nmeas = recs.n_meas
    gblk = eslot // S
    single = True
    if gm.size:
        gptr = np.zeros(nmeas + 1, np.int64)
        np.cumsum(np.bincount(gm, minlength=nmeas), out=gptr[1:])
        has_g = gptr[1:] > gptr[:-1]
        mblk = np.zeros(nmeas, np.int64)
        mblk[has_g] = gblk[gptr[:-1][has_g]]
        single = bool(np.all(gblk == mblk[gm]))
    Hg = Gb = None
    if single:
        # fast path: every measurement touches one label block -> dense per-measurement vectors
        qmax = max(int(q.max(initial=0)), 1)
        d = np.bincount(gm * S + eslot % S, weights=recs.glb_der, minlength=nmeas * S).reshape(nmeas, S)
        a_l = np.bincount(lm * qmax + li, weights=recs.loc_der, minlength=nmeas * qmax).reshape(nmeas, qmax)
        wd = d * w[:, None]
        wa = a_l * w[:, None]
        r_m = meas_rec
        blk_m = mblk if gm.size else np.zeros(nmeas, np.int64)
        q_m = q[r_m]
        rstart = np.zeros(nrec + 1, np.int64)
        np.cumsum(nb, out=rstart[1:])
        n_rb = int(rstart[-1])
        hg = has_g if gm.size else np.zeros(nmeas, bool)
        if hg.all():
            hg = slice(None)
        rb_m = rstart[:-1][r_m] + blk_m  # (record, block) id of each measurement with globals
        rb_mh = rb_m[hg]  # D = Σ w d dᵀ per block is summed by the caller (accepted records only)
        Pbuf = None  # D stays per (record, block); the caller accumulates D and F = M Mᵀ separately
        oK, totK = offs["K"]
        # (record, block) slots in shape-group order: γ (S values) and H (S·q values) per slot are summed
        # straight into their buffers (slot k of gambuf/Hbuf = k-th (record, block) in group order)
        rbg_m = (oK[r_m] // S + blk_m)[hg]
        uniform_q = bool(np.all(q == qmax))
        if uniform_q:
            # one product per segment kind with [a | y] on the right: (H | γ) per slot, (Γ | β) per record
            ay = np.empty((nmeas, qmax + 1))
            ay[:, :qmax] = a_l
            ay[:, qmax] = y
            # (the groups below take strided views of these, no copies)
            Hg = _outer_segsum(rbg_m, wd[hg], ay[hg], n_rb).reshape(n_rb, S, qmax + 1)
            rg_m = offs["G"][0][r_m] // (qmax * qmax)  # record position in group order
            Gb = _outer_segsum(rg_m, wa, ay, nrec).reshape(nrec, qmax, qmax + 1)
            oq, totq = offs["q"]
        else:
            gambuf = _outer_segsum(rbg_m, wd[hg], y[hg, None], n_rb).ravel()
            o, tot = offs["H"]
            # entries with local index >= q_r carry exact zeros; their (aliased) index is harmless
            base = o[r_m] + blk_m * S * q_m
            idx = base[:, None, None] + np.arange(S)[None, :, None] * q_m[:, None, None] + \
                np.arange(qmax)[None, None, :]
            Hbuf = np.bincount(np.minimum(idx, max(tot - 1, 0)).ravel(),
                               weights=(wd[:, :, None] * a_l[:, None, :]).ravel(), minlength=tot)[:tot]
            o, tot = offs["G"]
            idx = o[r_m][:, None, None] + np.arange(qmax)[None, :, None] * q_m[:, None, None] + \
                np.arange(qmax)[None, None, :]
            Gbuf = np.bincount(np.minimum(idx, max(tot - 1, 0)).ravel(),
                               weights=(wa[:, :, None] * a_l[:, None, :]).ravel(), minlength=tot)[:tot]
            oq, totq = offs["q"]
            idx = oq[r_m][:, None] + np.arange(qmax)[None, :]
            betabuf = np.bincount(np.minimum(idx, max(totq - 1, 0)).ravel(),
                                  weights=(wa * y[:, None]).ravel(), minlength=totq)[:totq]
    else:
        # D = Σ w d dᵀ, upper block pairs only (pairs of global entries of one measurement)
        i, j = _pairs_within(gm)
        si, sj = eslot[i], eslot[j]
        a, b = si // S, sj // S
        keep = a <= b
        i, j, si, sj, a, b = i[keep], j[keep], si[keep], sj[keep], a[keep], b[keep]
        rr = meas_rec[gm[i]]
        nbr = nb[rr]
        pidx = a * nbr - a * (a - 1) // 2 + (b - a)
        o, tot = offs["P"]
        Pbuf = np.bincount(o[rr] + pidx * S2 + (si % S) * S + (sj % S),
                           weights=w[gm[i]] * recs.glb_der[i] * recs.glb_der[j], minlength=tot)
        # H = Σ w d aᵀ
        o, tot = offs["H"]
        if lm.size and gm.size:
            i, j = _pairs_within(gm, lm)
            rr = meas_rec[gm[i]]
            Hbuf = np.bincount(o[rr] + eslot[i] * q[rr] + li[j],
                               weights=w[gm[i]] * recs.glb_der[i] * recs.loc_der[j], minlength=tot)
        else:
            Hbuf = np.zeros(tot)
        # Γ = Σ w a aᵀ, β = Σ w a y
        o, tot = offs["G"]
        oq, totq = offs["q"]
        if lm.size:
            i, j = _pairs_within(lm)
            rr = meas_rec[lm[i]]
            Gbuf = np.bincount(o[rr] + li[i] * q[rr] + li[j],
                               weights=w[lm[i]] * recs.loc_der[i] * recs.loc_der[j], minlength=tot)
            betabuf = np.bincount(oq[meas_rec[lm]] + li, weights=w[lm] * recs.loc_der * y[lm], minlength=totq)
        else:
            Gbuf = np.zeros(tot)
            betabuf = np.zeros(totq)
        oK, totK = offs["K"]
        gambuf = np.bincount(oK[meas_rec[gm]] + eslot, weights=w[gm] * recs.glb_der * y[gm], minlength=totK)
    ywy = np.bincount(meas_rec, weights=w * y * y, minlength=nrec)

    chi2 = np.zeros(nrec)
    ok = np.ones(nrec, bool)
    groups = []
    sk = gkey[order]
    bounds = np.flatnonzero(np.diff(sk)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.concatenate([bounds, [nrec]]).astype(np.int64)
    for s, e in zip(starts, ends):
        rec = order[s:e]
        R = rec.size
        r0 = rec[0]
        nbg, qg = int(nb[r0]), int(q[r0])
        Kg, npg = nbg * S, nbg * (nbg + 1) // 2
        P = None if Pbuf is None else Pbuf[offs["P"][0][r0]: offs["P"][0][r0] + R * npg * S2].reshape(R, npg, S, S)
        Mg = None
        if Hg is not None:
            s0, g0 = oK[r0] // S, offs["G"][0][r0] // (qg * qg) if qg else 0
            gam = Hg[s0: s0 + R * nbg, :, -1].reshape(R, Kg)
        else:
            gam = gambuf[oK[r0]: oK[r0] + R * Kg].reshape(R, Kg)
        if qg:
            if Hg is not None:
                Gm = Gb[g0: g0 + R, :, :qg]
                H = Hg[s0: s0 + R * nbg, :, :qg].reshape(R, Kg, qg)
                beta = Gb[g0: g0 + R, :, qg]
            else:
                Gm = Gbuf[offs["G"][0][r0]: offs["G"][0][r0] + R * qg * qg].reshape(R, qg, qg)
                H = Hbuf[offs["H"][0][r0]: offs["H"][0][r0] + R * Kg * qg].reshape(R, Kg, qg)
                beta = betabuf[oq[r0]: oq[r0] + R * qg].reshape(R, qg)
            Vs, good = _inverse_root(Gm)  # Γ⁻¹ = Vs Vsᵀ
            M = H @ Vs  # (R, K, q)
            u = np.einsum("rqp,rq->rp", Vs, beta)  # Vsᵀ β
            br = gam - np.matmul(M, u[:, :, None])[:, :, 0]
            c2 = ywy[rec] - np.einsum("rp,rp->r", u, u)
            if nbg and P is None:
                Mg = M  # the caller forms F = M Mᵀ of the accepted records, batch by batch
            elif nbg:
                # M Mᵀ by block rows: row block a against blocks a..nb-1, subtracted in place from the
                # upper block pairs (P is a view into Pbuf; pair order (0,0),(0,1),..,(1,1),.. = triu order)
                Mt = M.transpose(0, 2, 1)
                pp = 0
                for a in range(nbg):
                    n_ = nbg - a
                    rowblk = M[:, a * S:(a + 1) * S] @ Mt[:, :, a * S:]  # (R, S, n_·S)
                    P[:, pp:pp + n_] -= rowblk.reshape(R, S, n_, S).transpose(0, 2, 1, 3)
                    pp += n_
            ok[rec] = good
            lpar = np.einsum("rqp,rp->rq", Vs, u)
        else:
            br, c2 = gam.copy(), ywy[rec]
            lpar = np.zeros((R, 0))
        chi2[rec] = c2
        groups.append({"rec": rec, "P": P, "M": Mg, "b": br, "nb": nbg, "lpar": lpar})
    out = {"chi2": chi2, "ok": ok, "groups": groups, "Pbuf": Pbuf, "Poff": offs["P"][0] // S2}
    if Pbuf is None:
        out["wd"], out["d"], out["rb_m"] = wd[hg], d[hg], rb_mh
    return out


def _inverse_root(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V with V Vᵀ = G⁻¹ for a stack of symmetric (R, q, q) matrices, and which of them are regular.

    Small q: Cholesky G = L Lᵀ vectorised over the stack (loops over the q² entries only), V = L⁻ᵀ; a
    matrix is singular when a pivot falls below 1e-12 of its diagonal element. Large q: eigendecomposition
    (singular when the eigenvalue ratio is below 1e-12). Singular matrices get V = 0.
    """
    R, q, _ = G.shape
    if q > 8:
        lam, V = np.linalg.eigh(G)
        good = (lam[:, -1] > 0) & (lam[:, 0] > 1e-12 * lam[:, -1])
        inv_sq = np.where(good[:, None], 1.0 / np.sqrt(np.where(lam > 0, lam, 1.0)), 0.0)
        return V * inv_sq[:, None, :], good
    L = np.zeros_like(G)
    good = np.ones(R, bool)
    for j in range(q):
        piv = G[:, j, j] - np.einsum("rk,rk->r", L[:, j, :j], L[:, j, :j])
        okj = piv > 1e-12 * np.abs(G[:, j, j])
        good &= okj
        d = np.sqrt(np.where(okj, piv, 1.0))
        L[:, j, j] = d
        for i in range(j + 1, q):
            L[:, i, j] = (G[:, i, j] - np.einsum("rk,rk->r", L[:, i, :j], L[:, j, :j])) / d
    X = np.zeros_like(G)  # X = L⁻¹ (lower), column by column
    for j in range(q):
        X[:, j, j] = 1.0 / L[:, j, j]
        for i in range(j + 1, q):
            X[:, i, j] = -np.einsum("rk,rk->r", L[:, i, j:i], X[:, j:i, j]) / L[:, i, i]
    X[~good] = 0.0
    return X.transpose(0, 2, 1), good


def _residuals(recs: MilleRecords, y: np.ndarray, sysd: dict, meas_rec: np.ndarray) -> np.ndarray:
    """Measurement residuals after the local fit (global corrections already applied to ``y``)."""
    nrec = recs.n_records
    qmax = max((g["lpar"].shape[1] for g in sysd["groups"]), default=0)
    lpar = np.zeros((nrec, max(qmax, 1)))
    for g in sysd["groups"]:
        lpar[g["rec"], : g["lpar"].shape[1]] = g["lpar"]
    if not recs.loc_meas.size:
        return y.copy()
    pred = np.bincount(recs.loc_meas, weights=recs.loc_der * lpar[meas_rec[recs.loc_meas],
                                                                   recs.loc_index.astype(np.int64)],
                       minlength=recs.n_meas)
    return y - pred
