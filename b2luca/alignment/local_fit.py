"""Local fits of the assembly: per record (track), the local parameters are eliminated exactly.

For every record r (Γ = Σ w a aᵀ, β = Σ w a y, H = Σ w d aᵀ, D = Σ w d dᵀ, γ = Σ w d y)::

    C_r = D − H Γ⁻¹ Hᵀ,  b_r = γ − H Γ⁻¹ β,  χ²_r(Δg) = yᵀWy − βᵀΓ⁻¹β − 2 b_rᵀΔg + ΔgᵀC_rΔg

Records are grouped by shape (number of local parameters q, number of label blocks) and each group is
solved with batched numpy linear algebra; :class:`LocalSystems` holds the results for
:class:`b2luca.alignment.assemble.Assembler` to accept or reject and accumulate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import outer_segsum, pairs_within
from .mille import MilleRecords

#: inverse_root's vectorised Cholesky (and its singular test) up to this many local parameters; the compiled
#: path of the assembly (b2luca/alignment/_kernels.py) takes records up to this size and applies the same test
SMALL_Q = 8
_GRAM_MIN_Q = 8  # (Γ | β) by per-record products (_record_grams) above this many local parameters
_GRAM_BATCH = 64  # records per batched product of _record_grams
_GRAM_ELEMENTS = 1 << 22  # and at most this many padded values (32 MB) per batch

__all__ = ["SMALL_Q", "LocalSystems", "ShapeGroup", "inverse_root", "inverse_root_eigh", "local_systems", "residuals"]


@dataclass
class ShapeGroup:
    """The records of one shape (``nb`` label blocks, the same number of local parameters).

    ``rec``: their record indices; ``b``: (R, nb·S) reduced right-hand sides b_r; ``lpar``: (R, q) fitted
    local parameters; ``P``: (R, n_pairs, S, S) Schur complements C_r in upper block-pair layout (a view
    into :attr:`LocalSystems.Pbuf`), or None on the fast path, where ``M`` (R, nb·S, q) = H Γ^-½ is kept
    instead (C_r = D_r − M Mᵀ; None when the records have no local parameters or no blocks).
    """

    rec: np.ndarray
    P: np.ndarray | None
    M: np.ndarray | None
    b: np.ndarray
    nb: int
    lpar: np.ndarray


@dataclass
class LocalSystems:
    """Local fits of a chunk of records.

    ``chi2``/``ok`` per record (ok: Γ regular); ``groups`` by shape; ``Pbuf``: the per-record block-pair
    rows (S·S values each) of the general path, record r's first row at ``Poff[r]``.  On the fast path
    (every measurement touches one label block) ``Pbuf`` is None and D is summed by the caller from
    ``wd`` = w·d, ``d`` (per measurement with globals) and ``rb_m`` (their (record, block) slot).
    """

    chi2: np.ndarray
    ok: np.ndarray
    groups: list[ShapeGroup]
    Pbuf: np.ndarray | None
    Poff: np.ndarray
    wd: np.ndarray | None = None
    d: np.ndarray | None = None
    rb_m: np.ndarray | None = None


def local_systems(recs: MilleRecords, y: np.ndarray, w: np.ndarray, meas_rec: np.ndarray,
                  eslot: np.ndarray, K: np.ndarray, q: np.ndarray, S: int) -> LocalSystems:
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
    Hg: np.ndarray | None = None  # fast path with uniform q: (H | γ) per (record, block) slot
    Gb: np.ndarray | None = None  # and (Γ | β) per record
    Pbuf: np.ndarray | None
    Hbuf: np.ndarray
    Gbuf: np.ndarray
    betabuf: np.ndarray
    gambuf: np.ndarray
    if single:
        # fast path: every measurement touches one label block -> dense per-measurement vectors
        qmax = max(int(q.max(initial=0)), 1)
        d = np.bincount(gm * S + eslot % S, weights=recs.glb_der, minlength=nmeas * S).reshape(nmeas, S)
        a_l = np.bincount(lm * qmax + li, weights=recs.loc_der, minlength=nmeas * qmax).reshape(nmeas, qmax)
        wd = d * w[:, None]
        wa = a_l * w[:, None]
        r_m = meas_rec
        blk_m = mblk if gm.size else np.zeros(nmeas, np.int64)
        rstart = np.zeros(nrec + 1, np.int64)
        np.cumsum(nb, out=rstart[1:])
        n_rb = int(rstart[-1])
        hg_mask = has_g if gm.size else np.zeros(nmeas, bool)
        hg: np.ndarray | slice = slice(None) if hg_mask.all() else hg_mask
        rb_m = rstart[:-1][r_m] + blk_m  # (record, block) id of each measurement with globals
        rb_mh = rb_m[hg]  # D = Σ w d dᵀ per block is summed by the caller (accepted records only)
        Pbuf = None  # D stays per (record, block); the caller accumulates D and F = M Mᵀ separately
        oK, totK = offs["K"]
        # (record, block) slots in shape-group order: γ (S values) and H (S·q values) per slot are summed
        # straight into their buffers (slot k of gambuf/Hbuf = k-th (record, block) in group order)
        rbg_m = (oK[r_m] // S + blk_m)[hg]
        # one product per segment kind with [a | y] on the right: (H | γ) per slot, (Γ | β) per record, q_max
        # columns wide (a record with fewer local parameters has zero columns there; the groups below take
        # strided views of their first q columns, no copies)
        ay = np.empty((nmeas, qmax + 1))
        ay[:, :qmax] = a_l
        ay[:, qmax] = y
        Hg = outer_segsum(rbg_m, wd[hg], ay[hg], n_rb).reshape(n_rb, S, qmax + 1)
        gpos = np.empty(nrec, np.int64)  # record position in group order
        gpos[order] = np.arange(nrec)
        if qmax > _GRAM_MIN_Q:
            Gb = _record_grams(recs.rec_ptr, order, q, w, ay, qmax)
        else:  # few local parameters: per-measurement outer products are as cheap and need no padding
            Gb = outer_segsum(gpos[r_m], wa, ay, nrec).reshape(nrec, qmax, qmax + 1)
    else:
        # D = Σ w d dᵀ, upper block pairs only (pairs of global entries of one measurement)
        i, j = pairs_within(gm)
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
        # H = Σ w d aᵀ and (Γ | β) = Σ w a (aᵀ | y) as sparse x dense products over dense per-measurement
        # local vectors (q_max wide), rows in shape-group order, then cut to each record's q columns
        # (pairs of entries would cost O(q²) index arithmetic per measurement with kinks as locals)
        qmax = max(int(q.max(initial=0)), 1)
        a_l = np.bincount(lm * qmax + li, weights=recs.loc_der, minlength=nmeas * qmax).reshape(nmeas, qmax)
        cols = np.arange(qmax)
        qo = q[order]
        oK, totK = offs["K"]
        if lm.size and gm.size:
            Hd = outer_segsum(oK[meas_rec[gm]] + eslot, (w[gm] * recs.glb_der)[:, None], a_l[gm], totK)
            Hbuf = Hd[cols[None, :] < np.repeat(qo, K[order])[:, None]]
        else:
            Hbuf = np.zeros(offs["H"][1])
        if lm.size:
            pos = np.empty(nrec, np.int64)
            pos[order] = np.arange(nrec)
            ay = np.empty((nmeas, qmax + 1))
            ay[:, :qmax] = a_l
            ay[:, qmax] = y
            Gd = outer_segsum(pos[meas_rec], a_l * w[:, None], ay, nrec).reshape(nrec, qmax, qmax + 1)
            inq = cols[None, :] < qo[:, None]
            Gbuf = Gd[:, :, :qmax][inq[:, :, None] & inq[:, None, :]]
            betabuf = Gd[:, :, qmax][inq]
        else:
            Gbuf = np.zeros(offs["G"][1])
            betabuf = np.zeros(offs["q"][1])
        oq, totq = offs["q"]
        gambuf = np.bincount(oK[meas_rec[gm]] + eslot, weights=w[gm] * recs.glb_der * y[gm], minlength=totK)
    ywy = np.bincount(meas_rec, weights=w * y * y, minlength=nrec)

    chi2 = np.zeros(nrec)
    ok = np.ones(nrec, bool)
    groups = []
    sk = gkey[order]
    bounds = np.flatnonzero(np.diff(sk)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.concatenate([bounds, [nrec]]).astype(np.int64)
    # fast path: Γ^-½ of all records with the same q at once (groups of one q are consecutive in ``order``,
    # so are their rows of Gb): one batched call per q, not one per (q, nb) group
    vs_q: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
    if Gb is not None:
        qs = q[order]
        for qv in np.unique(qs[qs > 0]):
            at = np.flatnonzero(qs == qv)
            a0, a1 = int(at[0]), int(at[-1]) + 1
            vs_q[int(qv)] = (a0, *inverse_root(Gb[a0:a1, :qv, :qv]))
    for s, e in zip(starts, ends):
        rec = order[s:e]
        R = rec.size
        r0 = rec[0]
        nbg, qg = int(nb[r0]), int(q[r0])
        Kg, npg = nbg * S, nbg * (nbg + 1) // 2
        P = None if Pbuf is None else Pbuf[offs["P"][0][r0]: offs["P"][0][r0] + R * npg * S2].reshape(R, npg, S, S)
        Mg = None
        if Hg is not None:
            s0, g0 = oK[r0] // S, gpos[r0]
            gam = Hg[s0: s0 + R * nbg, :, -1].reshape(R, Kg)
        else:
            gam = gambuf[oK[r0]: oK[r0] + R * Kg].reshape(R, Kg)
        if qg:
            if Hg is not None:
                assert Gb is not None
                Gm = Gb[g0: g0 + R, :qg, :qg]
                H = Hg[s0: s0 + R * nbg, :, :qg].reshape(R, Kg, qg)
                beta = Gb[g0: g0 + R, :qg, -1]
            else:
                Gm = Gbuf[offs["G"][0][r0]: offs["G"][0][r0] + R * qg * qg].reshape(R, qg, qg)
                H = Hbuf[offs["H"][0][r0]: offs["H"][0][r0] + R * Kg * qg].reshape(R, Kg, qg)
                beta = betabuf[oq[r0]: oq[r0] + R * qg].reshape(R, qg)
            if qg in vs_q:  # Γ⁻¹ = Vs Vsᵀ
                a0, vs_all, good_all = vs_q[qg]
                Vs, good = vs_all[g0 - a0: g0 - a0 + R], good_all[g0 - a0: g0 - a0 + R]
            else:
                Vs, good = inverse_root(Gm)
            M = H @ Vs  # (R, K, q)
            u = np.einsum("rqp,rq->rp", Vs, beta)  # Vsᵀ β
            br = gam - np.matmul(M, u[:, :, None])[:, :, 0]
            c2 = ywy[rec] - np.einsum("rp,rp->r", u, u)
            if nbg and P is None:
                Mg = M  # the caller forms F = M Mᵀ of the accepted records, batch by batch
            elif nbg:
                # M Mᵀ by block rows: row block a against blocks a..nb-1, subtracted in place from the
                # upper block pairs (P is a view into Pbuf; pair order (0,0),(0,1),..,(1,1),.. = triu order)
                assert P is not None
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
        groups.append(ShapeGroup(rec=rec, P=P, M=Mg, b=br, nb=nbg, lpar=lpar))
    if Pbuf is None:
        return LocalSystems(chi2=chi2, ok=ok, groups=groups, Pbuf=None, Poff=offs["P"][0] // S2,
                            wd=wd[hg], d=d[hg], rb_m=rb_mh)
    return LocalSystems(chi2=chi2, ok=ok, groups=groups, Pbuf=Pbuf, Poff=offs["P"][0] // S2)


def _record_grams(rec_ptr: np.ndarray, order: np.ndarray, q: np.ndarray, w: np.ndarray, ay: np.ndarray,
                  qmax: int) -> np.ndarray:
    """(Γ | β) = Σ_m w a (aᵀ | y) of every record, rows in ``order`` (nrec, qmax, qmax + 1), each record's
    first q columns only (the rest zero).

    A record's rows are contiguous (``rec_ptr``), so its sum is one small matrix product of its measurement
    rows, batched with numpy over records of the same q and similar size (padded with zero rows): q² + q
    products per measurement, not qmax² as a sum of per-measurement outer products."""
    nrec = order.size
    out = np.zeros((nrec, qmax, qmax + 1))
    n_r = np.diff(rec_ptr)
    qo = q[order]
    for qv in np.unique(qo).tolist():
        if qv == 0:
            continue
        pos = np.flatnonzero(qo == qv)  # positions in ``order`` (output rows)
        pos = pos[np.argsort(n_r[order[pos]], kind="stable")]  # similar sizes together: little padding
        cols = np.r_[0:qv, qmax]  # the record's q local columns and y
        b0 = 0
        while b0 < pos.size:
            # at most _GRAM_BATCH records and _GRAM_ELEMENTS padded values (sizes ascend: the last is the largest)
            m_hi = int(n_r[order[pos[min(b0 + _GRAM_BATCH, pos.size) - 1]]])
            nb = max(1, min(_GRAM_BATCH, _GRAM_ELEMENTS // max(1, m_hi * (qv + 1))))
            pb = pos[b0: b0 + nb]
            b0 += nb
            rec = order[pb]
            cnt = n_r[rec]
            m = int(cnt.max(initial=0))
            if m == 0:
                continue
            # measurement rows of these records, padded to m rows each (padding reads row 0, then zeroed): one
            # gather of the q + 1 columns, no boolean-mask copies
            slot = np.arange(m)[None, :]
            live = slot < cnt[:, None]
            rows = np.where(live, rec_ptr[rec][:, None] + slot, 0)
            A = ay[rows[:, :, None], cols[None, None, :]] if qv < qmax else ay[rows]  # (R, m, q + 1)
            A *= live[:, :, None]
            WA = A[:, :, :qv] * np.where(live, w[rows], 0.0)[:, :, None]
            G = np.matmul(WA.transpose(0, 2, 1), A)  # (R, q, q + 1)
            out[pb, :qv, :qv] = G[:, :, :qv]
            out[pb, :qv, qmax] = G[:, :, qv]
    return out


def inverse_root(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V with V Vᵀ = G⁻¹ for a stack of symmetric (R, q, q) matrices, and which of them are regular.

    Small q: Cholesky G = L Lᵀ vectorised over the stack (loops over the q² entries only), V = L⁻ᵀ; a
    matrix is singular when a pivot falls below 1e-12 of its diagonal element. Large q: batched LAPACK
    Cholesky, V = L⁻ᵀ, for the matrices that pass that test; the others by eigendecomposition
    (:func:`inverse_root_eigh`, singular when the eigenvalue ratio is below 1e-12). Singular matrices get V = 0.
    """
    R, q, _ = G.shape
    if q > SMALL_Q:
        # batched LAPACK Cholesky (several times faster than eigh for the q ~ 20-40 of broken-line records;
        # a relative ridge of 1e-14 keeps a singular matrix from stopping the batch: it fails the pivot test
        # below and is redone by eigendecomposition, as is the whole batch if LAPACK still refuses)
        dg = np.abs(np.einsum("rii->ri", G))
        try:
            L = np.linalg.cholesky(G + (1e-14 * dg + 1e-300)[:, :, None] * np.eye(q))
        except np.linalg.LinAlgError:
            return inverse_root_eigh(G)
        ld = np.einsum("rii->ri", L)
        chol_ok = np.all((ld * ld > 1e-12 * dg) & (dg > 0), axis=1)
        out = np.zeros_like(G)
        out[chol_ok] = np.swapaxes(np.linalg.inv(L[chol_ok]), 1, 2)
        good = chol_ok.copy()
        if not chol_ok.all():
            out[~chol_ok], good[~chol_ok] = inverse_root_eigh(G[~chol_ok])
        return out, good
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


def inverse_root_eigh(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`inverse_root` by eigendecomposition: singular when the eigenvalue ratio is below 1e-12."""
    lam, V = np.linalg.eigh(G)
    good = (lam[:, -1] > 0) & (lam[:, 0] > 1e-12 * lam[:, -1])
    inv_sq = np.where(good[:, None], 1.0 / np.sqrt(np.where(lam > 0, lam, 1.0)), 0.0)
    return V * inv_sq[:, None, :], good


def residuals(recs: MilleRecords, y: np.ndarray, systems: LocalSystems, meas_rec: np.ndarray) -> np.ndarray:
    """Measurement residuals after the local fit (global corrections already applied to ``y``)."""
    nrec = recs.n_records
    qmax = max((g.lpar.shape[1] for g in systems.groups), default=0)
    lpar = np.zeros((nrec, max(qmax, 1)))
    for g in systems.groups:
        lpar[g.rec, : g.lpar.shape[1]] = g.lpar
    if not recs.loc_meas.size:
        return y.copy()
    pred = np.bincount(recs.loc_meas, weights=recs.loc_der * lpar[meas_rec[recs.loc_meas],
                                                                   recs.loc_index.astype(np.int64)],
                       minlength=recs.n_meas)
    return y - pred
