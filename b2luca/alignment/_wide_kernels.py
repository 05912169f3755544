"""Compiled (numba) kernels of the assembly's single-block path for *wide* records.

The records of :mod:`b2luca.alignment._kernels` have at most
:data:`~b2luca.alignment.local_fit.SMALL_Q` local parameters and few block rows; this module takes the other
single-block records: many local parameters (a broken-line track with its kinks: ~20-40, a collision event with
a common vertex: up to a few hundred) and many label blocks (a track through the VXD and every CDC layer).  The
same sums and the same order of operations per record as :func:`b2luca.alignment._kernels.accumulate`, with two
differences that only matter for wide records:

* Γ = Σ w a aᵀ, β and H = Σ w d aᵀ are summed over each measurement's *entries* (a track's hit has ~14 local
  derivatives whatever the number of local parameters of its event), not over dense length-q vectors;
* M = H L⁻ᵀ and F = M Mᵀ are formed over the record's *used* block rows only (a label block of S positions
  whose labels do not fill it, e.g. a CDC layer's 3 parameters in blocks of 6, has unused rows).

A record's F may also be formed in *measurement space* (:func:`_meas_space`): with Z = A L⁻ᵀ over its n_m
measurements that have global entries, F = Dᵀ W Z Zᵀ W D, an n_m² q product instead of K² q.  Each record takes
whichever form a flop model (:func:`_meas_space_cheaper`) finds cheaper; both give the same sums to round-off
(tests/alignment/test_kernels.py checks both against the exact system).  In the demo it is chosen for the
di-muon vertex events, whose per-track grouping costs more than the measurement-space product.

The exports have the signatures of the narrow module's (:mod:`b2luca.alignment.fast_path` hands either module
to :class:`b2luca.alignment.assemble.Assembler`).  Importing this module imports numba; the kernels are cached
on disk like the narrow ones.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._kernels import (U, _cholesky, _forward, _local_solution, _meas_ptr, _reweight, _weight_fraction,
                       chunk_structure, pair_keys)

__all__ = ["accumulate", "accumulate_mode", "chunk_structure", "chunk_structure_wide", "fit_records", "pair_index", "pair_keys"]

#: :func:`pair_index` (a table of every block pair) up to this many label blocks, else a sort of the keys
PAIR_TABLE_BLOCKS = 2048
#: rows of M per product of F = M Mᵀ (whole label blocks): fewer products against the wasted lower triangle
PANEL_ROWS = 48


@njit(cache=True, nogil=True, inline="always")
def _forward_rows(L: np.ndarray, q: int, X: np.ndarray, n: int) -> None:  # pragma: no cover - compiled
    """X[:q, :n] ← L⁻¹ X[:q, :n] (lower triangular L), row by row: the inner loops run over the n columns
    (vectorised); zero entries of L (another track of the event: L keeps them apart) are skipped."""
    for k in range(q):
        for i in range(k):
            c = L[k, i]
            if c == 0.0:
                continue
            for j in range(n):
                X[k, j] -= c * X[i, j]
        c = 1.0 / L[k, k]
        for j in range(n):
            X[k, j] *= c


@njit(cache=True, nogil=True, inline="always")
def _sparse_gram(m0: int, m1: int, loc_ptr: np.ndarray, loc_index: np.ndarray, loc_der: np.ndarray,
                 y: np.ndarray, wm: np.ndarray, q: int, G: np.ndarray, beta: np.ndarray) -> float:  # pragma: no cover
    """Γ (lower triangle) and β of measurements m0..m1 into G, beta, over each measurement's entries (repeated
    local indices of one measurement add up, as a dense sum would); returns yᵀWy."""
    for i in range(q):
        beta[i] = 0.0
        for j in range(i + 1):
            G[i, j] = 0.0
    ywy = 0.0
    for m in range(m0, m1):
        wmm = wm[m]
        ym = y[m]
        e0, e1 = loc_ptr[m], loc_ptr[m + 1]
        for e in range(e0, e1):
            i = loc_index[e]
            wa = wmm * loc_der[e]
            beta[i] += wa * ym
            for f in range(e0, e1):  # every ordered pair with index(f) <= index(e): Σ over the entries of a_i a_j
                j = loc_index[f]
                if j <= i:
                    G[i, j] += wa * loc_der[f]
        ywy += wmm * ym * ym
    return ywy


@njit(cache=True, nogil=True)
def fit_records(rec_ptr: np.ndarray, loc_ptr: np.ndarray, loc_index: np.ndarray, loc_der: np.ndarray,
                y: np.ndarray, w: np.ndarray, q: np.ndarray, iterations: int, huber_c: float,
                cauchy_c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """:func:`b2luca.alignment._kernels.fit_records` with Γ and β summed over the entries (see the module)."""
    nrec = rec_ptr.size - 1
    qmax = 1
    for r in range(nrec):
        qmax = max(qmax, q[r])
    G = np.zeros((qmax, qmax))
    L = np.zeros((qmax, qmax))
    u = np.zeros(qmax)
    chi2 = np.empty(nrec)
    ok = np.empty(nrec, np.bool_)
    fsum = np.empty(nrec)
    wm = w.copy()
    for r in range(nrec):
        m0, m1, qr = rec_ptr[r], rec_ptr[r + 1], q[r]
        for it in range(iterations + 1):
            if it > 0:  # new weights from the residuals of the previous fit
                _reweight(m0, m1, loc_ptr, loc_index, loc_der, y, w, u, it, huber_c, cauchy_c, wm)
            ywy = _sparse_gram(m0, m1, loc_ptr, loc_index, loc_der, y, wm, qr, G, u)
            c2, good = _local_solution(G, L, u, qr, ywy, it < iterations)
            chi2[r] = c2
            ok[r] = good
        fsum[r] = _weight_fraction(m0, m1, wm, w)
    return chi2, ok, fsum, wm


@njit(cache=True, nogil=True, inline="always")
def _subtract_gram(M: np.ndarray, K: int, nblk: int, bstart: np.ndarray, brank: np.ndarray, vpos: np.ndarray,
                   pairrow: np.ndarray, nbr: int, tot: np.ndarray, Fflat: np.ndarray, Su: int) -> None:  # pragma: no cover
    """tot[pair] −= the upper block pairs of M Mᵀ, M (K, n): rows bstart[a]..bstart[a+1] of M are the used rows of
    the record's block of rank brank[a] (ranks increasing), vpos their positions in it; pairrow[ia·nbr + ib]: the
    row of tot of the record's block pair (ia, ib), ia <= ib.  By panels of whole blocks (about PANEL_ROWS rows),
    each one BLAS product of its rows of M against the rows from its first on."""
    Ku = U(K)
    pa = 0
    while pa < nblk:
        pb = pa + 1
        while pb < nblk and bstart[pb + 1] - bstart[pa] <= PANEL_ROWS:
            pb += 1
        p0, p1 = U(bstart[pa]), U(bstart[pb])
        F = Fflat[: (p1 - p0) * (Ku - p0)].reshape((p1 - p0, Ku - p0))
        np.dot(M[p0:p1], M[p0:Ku].T, F)
        for a in range(pa, pb):
            ra = U(brank[a]) * U(nbr)
            for b in range(a, nblk):
                row = U(pairrow[ra + U(brank[b])])
                for ci in range(U(bstart[a]), U(bstart[a + 1])):  # the used positions only
                    base = U(vpos[ci]) * Su
                    for cj in range(U(bstart[b]), U(bstart[b + 1])):
                        tot[row, base + U(vpos[cj])] -= F[ci - p0, cj - p0]
        pa = pb


#: the measurement-space form's cost per scattered product against one multiply-add of the BLAS products
#: (measured on the demo's records: with 9 the cosmic tracks keep the block-row form, the di-muon events take
#: the measurement space, ~30 % faster)
SCATTER_COST = 9.0
#: the measurement space only for records of up to this many local parameters (one or two tracks): a hadronic
#: event's block-row form sums F track by track (its groups), which the cost model does not see (measured:
#: 2-10x slower in measurement space)
MEAS_SPACE_MAX_Q = 48


@njit(cache=True, nogil=True, inline="always")
def _meas_space_cheaper(m0: int, m1: int, glb_ptr: np.ndarray, q: int, K: int) -> bool:  # pragma: no cover
    """Whether :func:`_meas_space` costs fewer operations than the block-row form for this record: n_m² q/2 +
    q² n_m/2 + SCATTER_COST·(Σ|g|)²/2 against K² q/2 + q² K/2 (n_m measurements with global entries, Σ|g| their
    entries, K used block rows), for records of up to MEAS_SPACE_MAX_Q local parameters."""
    if q > MEAS_SPACE_MAX_Q:
        return False
    nm = 0
    sg = 0
    for m in range(m0, m1):
        g = glb_ptr[m + 1] - glb_ptr[m]
        if g > 0:
            nm += 1
            sg += g
    new = 0.5 * nm * q * (nm + q) + 0.5 * SCATTER_COST * sg * sg
    old = 0.5 * K * q * (K + q)
    return new < old


@njit(cache=True, nogil=True)
def _meas_space(m0: int, m1: int, loc_ptr: np.ndarray, loc_index: np.ndarray, loc_der: np.ndarray,
                glb_ptr: np.ndarray, mrank: np.ndarray, gpos: np.ndarray, glb_der: np.ndarray, lidx: np.ndarray,
                y: np.ndarray, wm: np.ndarray, qr: int, nbr: int, s0: int, ublk: np.ndarray, crow: np.ndarray,
                pairrow: np.ndarray, G: np.ndarray, L: np.ndarray, u: np.ndarray, gam: np.ndarray,
                d: np.ndarray, jm: np.ndarray, jr: np.ndarray, dn: np.ndarray, dpos: np.ndarray, dval: np.ndarray,
                gs: np.ndarray, Zt: np.ndarray, Zflat: np.ndarray, Pflat: np.ndarray, tot: np.ndarray,
                dblk: np.ndarray, entries: np.ndarray, Su: int, K: int, cstart: np.ndarray, vpos: np.ndarray,
                dden: np.ndarray, Q: np.ndarray) -> None:  # pragma: no cover - compiled
    """One record's sums in measurement space: with Z = A L⁻ᵀ (the n_m measurements with global entries × q,
    A their local derivatives) and D their global derivatives, M = Dᵀ W Z and F = M Mᵀ = Dᵀ W (Z Zᵀ) W D:
    an n_m² q product (upper block pairs only: the measurements sorted by block rank, panels of whole ranks)
    and a scatter of w_m w_m' (Z Zᵀ)_mm' d_m d_m'ᵀ into the pair sums, instead of K² q over the K used block
    rows; b = Dᵀ W (y − Z L⁻¹β).  ``gam`` (zeroed, compact rows ``crow``), ``dblk`` and ``entries`` as the
    block-row form fills them; the rest are work buffers."""
    ywy = _sparse_gram(m0, m1, loc_ptr, loc_index, loc_der, y, wm, qr, G, u)  # noqa: F841 (χ² known)
    _cholesky(G, L, qr)  # regular: accepted records passed fit_records' test on the same sums
    _forward(L, qr, u)
    # the measurements with global entries, by block rank (counting sort; stable: record order within a rank)
    for ia in range(nbr + 2):
        gs[ia] = 0
    for m in range(m0, m1):
        if glb_ptr[m + 1] > glb_ptr[m]:
            gs[U(mrank[m]) + U(2)] += 1
    for ia in range(nbr):
        gs[ia + 2] += gs[ia + 1]
    for m in range(m0, m1):
        if glb_ptr[m + 1] > glb_ptr[m]:
            rk = U(mrank[m])
            j = U(gs[rk + U(1)])
            gs[rk + U(1)] += 1
            jm[j] = m
            jr[j] = rk
    nm = U(gs[nbr])  # (gs[ia]: the first measurement of rank ia)
    for k in range(qr):
        for j in range(nm):
            Zt[k, j] = 0.0
    for j in range(nm):
        m = U(jm[j])
        rk = U(jr[j])
        for t in range(Su):
            d[t] = 0.0
        for e in range(U(glb_ptr[m]), U(glb_ptr[m + U(1)])):
            d[U(gpos[e])] += glb_der[e]
            entries[U(lidx[e])] += 1
        gb = U(ublk[s0 + rk])
        wmm = wm[m]
        n = 0
        for s in range(Su):
            wd = wmm * d[s]
            dden[j, s] = wd
            if wd == 0.0:
                continue
            dpos[j, n] = s
            dval[j, n] = wd
            n += 1
            for t in range(Su):
                dblk[gb, s * Su + t] += wd * d[t]
        dn[j] = n
        for e in range(U(loc_ptr[m]), U(loc_ptr[m + U(1)])):
            Zt[U(loc_index[e]), j] += loc_der[e]
    _forward_rows(L, qr, Zt, nm)  # Zᵀ = L⁻¹ Aᵀ
    for j in range(nm):  # b = Dᵀ W (y − Z u), u = L⁻¹β
        m = U(jm[j])
        res = y[m]
        for k in range(qr):
            res -= Zt[k, j] * u[k]
        base = U(jr[j]) * Su
        for a in range(U(dn[j])):
            gam[U(crow[base + U(dpos[j, a])])] += dval[j, a] * res
    if qr == 0 or nm == 0:
        return
    Z = Zflat[: nm * qr].reshape((nm, qr))
    for j in range(nm):
        for k in range(qr):
            Z[j, k] = Zt[k, j]
    # P = Z Zᵀ by panels of whole ranks (about PANEL_ROWS rows), each one BLAS product of its rows of Z against
    # the rows from its first on; then each pair m <= m' (by rank; both orders within a rank) into its block pair
    ra = 0
    while ra < nbr:
        rb = ra + 1
        while rb < nbr and gs[rb + 1] - gs[ra] <= PANEL_ROWS:
            rb += 1
        p0, p1 = U(gs[ra]), U(gs[rb])
        ra0 = ra
        ra = rb
        if p1 == p0:
            continue
        P = Pflat[: (p1 - p0) * (nm - p0)].reshape((p1 - p0, nm - p0))
        np.dot(Z[p0:p1], Z[p0:nm].T, P)
        for j in range(p0, p1):  # Q = (W Z Zᵀ W D) over the compact rows of the ranks from j's on
            rj = U(jr[j])
            c0 = U(cstart[rj])
            for c in range(c0, K):
                Q[j, c] = 0.0
            for j2 in range(U(gs[rj]), nm):
                pw = P[j - p0, j2 - p0]
                base = U(jr[j2]) * Su
                for b in range(U(dn[j2])):
                    Q[j, U(crow[base + U(dpos[j2, b])])] += pw * dval[j2, b]
        for a in range(ra0, ra):  # F_ab = D_aᵀ Q_a (rows of block a, columns of the blocks from a on)
            j0, j1 = U(gs[a]), U(gs[a + 1])
            if j1 == j0:
                continue
            prow = U(a) * U(nbr)
            for ci in range(U(cstart[a]), U(cstart[a + 1])):
                pa = U(vpos[ci])
                base = pa * Su
                for b in range(U(a), U(nbr)):
                    row = U(pairrow[prow + b])
                    for cj in range(U(cstart[b]), U(cstart[b + 1])):
                        f = 0.0
                        for j in range(j0, j1):
                            f += dden[j, pa] * Q[j, cj]
                        tot[row, base + U(vpos[cj])] -= f



@njit(cache=True, nogil=True)
def accumulate(order: np.ndarray, accept: np.ndarray, rec_ptr: np.ndarray, loc_ptr: np.ndarray, loc_index: np.ndarray,
               loc_der: np.ndarray, glb_ptr: np.ndarray, mrank: np.ndarray, gpos: np.ndarray, glb_der: np.ndarray,
               lidx: np.ndarray, y: np.ndarray, wm: np.ndarray, q: np.ndarray, nb: np.ndarray, ustart: np.ndarray,
               ublk: np.ndarray, bmem: np.ndarray, pair_off: np.ndarray, kinv: np.ndarray, tot: np.ndarray,
               dblk: np.ndarray, bsum: np.ndarray, entries: np.ndarray) -> None:  # pragma: no cover - compiled
    """:func:`b2luca.alignment._kernels.accumulate` (the same arguments and sums) for wide records: each record
    by the cheaper of its two forms (:func:`accumulate_mode`, ``mode`` 0)."""
    accumulate_mode(order, accept, rec_ptr, loc_ptr, loc_index, loc_der, glb_ptr, mrank, gpos, glb_der, lidx, y,
                    wm, q, nb, ustart, ublk, bmem, pair_off, kinv, tot, dblk, bsum, entries, 0)


@njit(cache=True, nogil=True)
def accumulate_mode(order: np.ndarray, accept: np.ndarray, rec_ptr: np.ndarray, loc_ptr: np.ndarray,
                    loc_index: np.ndarray, loc_der: np.ndarray, glb_ptr: np.ndarray, mrank: np.ndarray,
                    gpos: np.ndarray, glb_der: np.ndarray, lidx: np.ndarray, y: np.ndarray, wm: np.ndarray,
                    q: np.ndarray, nb: np.ndarray, ustart: np.ndarray, ublk: np.ndarray, bmem: np.ndarray,
                    pair_off: np.ndarray, kinv: np.ndarray, tot: np.ndarray, dblk: np.ndarray, bsum: np.ndarray,
                    entries: np.ndarray, mode: int) -> None:  # pragma: no cover - compiled
    """:func:`b2luca.alignment._kernels.accumulate` (the same arguments and sums) for wide records: sums over
    the entries, M and F over the used block rows only (see the module).

    F = M Mᵀ = Σ_k m_k m_kᵀ over the local parameters k (m_k: column k of M).  The local parameters of an event's
    tracks couple only through the common vertex (its two parameters come last, so the Cholesky factor and M keep
    the tracks apart: exact zeros): consecutive local parameters whose columns of M are nonzero in the same blocks
    form a group, and a record of several groups sums F group by group over the rows of the group's blocks only
    (Σ_g K_g² q_g instead of K² q: a third of the products for hadronic events).  A record of one group (a single
    track, a cosmic) takes the whole-record product as before."""
    nrec = accept.size
    S = bmem.shape[1]
    qmax, kmax, nbmax = 1, 1, 1
    for r in range(nrec):
        if accept[r]:
            qmax = max(qmax, q[r])
            kmax = max(kmax, nb[r] * S)
            nbmax = max(nbmax, nb[r])
    G = np.zeros((qmax, qmax))
    L = np.zeros((qmax, qmax))
    u = np.zeros(qmax)
    Mt = np.zeros((qmax, kmax))  # Hᵀ over the used rows, then Mᵀ = L⁻¹ Hᵀ in place
    Mflat = np.zeros(qmax * kmax)  # M (K, q) contiguous for the products
    Fflat = np.zeros(max(PANEL_ROWS, S) * kmax)  # a panel: whole blocks, at most PANEL_ROWS rows or one block
    gam = np.zeros(kmax)
    crow = np.zeros(kmax, np.int64)  # compact (used) row of block row ia·S + s, −1: unused
    cstart = np.zeros(kmax + 1, np.int64)  # first compact row of the record's block ia
    vpos = np.zeros(kmax, np.int64)  # position in its block (0..S-1) of each compact row
    d = np.zeros(S)
    Su = U(S)
    ident = np.arange(nbmax)  # the block ranks of a whole-record product
    pairrow = np.zeros(nbmax * nbmax, np.int64)  # row of tot of each block pair (ia, ib), ia <= ib, of the record
    sup = np.zeros((qmax, nbmax), np.bool_)  # the blocks in which column k of M is nonzero
    gfirst = np.zeros(qmax + 1, np.int64)  # the first local parameter of each group
    gblk = np.zeros(nbmax, np.int64)  # a group's blocks (ranks), their first rows in Mg and positions
    gstart = np.zeros(nbmax + 1, np.int64)
    gvpos = np.zeros(kmax, np.int64)
    Mgflat = np.zeros(qmax * kmax)  # a group's columns of M over its blocks' rows, contiguous
    # the measurement-space form (see _meas_space): its per-record buffers, over the measurements of a record
    nmax = 1
    for r in range(nrec):
        if accept[r]:
            nmax = max(nmax, rec_ptr[r + 1] - rec_ptr[r])
    jm = np.zeros(nmax, np.int64)
    jr = np.zeros(nmax, np.int64)
    dn = np.zeros(nmax, np.int64)
    dpos = np.zeros((nmax, S), np.int64)
    dval = np.zeros((nmax, S))
    gs = np.zeros(nbmax + 2, np.int64)
    Zt = np.zeros((qmax, nmax))
    Zflat = np.zeros(qmax * nmax)
    Pflat = np.zeros(nmax * nmax)
    dden = np.zeros((nmax, S))
    Qbuf = np.zeros((nmax, kmax))
    for r in order:
        if not accept[r] or nb[r] == 0:
            continue
        m0, m1, qr, nbr = U(rec_ptr[r]), U(rec_ptr[r + 1]), U(q[r]), U(nb[r])
        s0 = U(ustart[r])
        kc = 0
        for ia in range(nbr):
            cstart[ia] = kc
            blk = U(ublk[s0 + ia])
            for s in range(Su):
                if bmem[blk, s] >= 0:
                    crow[ia * Su + s] = kc
                    vpos[kc] = s
                    kc += 1
                else:
                    crow[ia * Su + s] = -1
        cstart[nbr] = kc
        K = U(kc)
        for i in range(K):
            gam[i] = 0.0
        kp = U(pair_off[r])
        for ia in range(nbr):
            for ib in range(ia, nbr):
                pairrow[ia * nbr + ib] = kinv[kp]
                kp += U(1)
        if mode == 1 or (mode == 0 and not _meas_space_cheaper(m0, m1, glb_ptr, qr, K)):  # H over the used block rows
            for k in range(qr):
                for i in range(K):
                    Mt[k, i] = 0.0
            ywy = _sparse_gram(m0, m1, loc_ptr, loc_index, loc_der, y, wm, q[r], G, u)  # noqa: F841 (χ² known)
            for m in range(m0, m1):
                g0, g1 = U(glb_ptr[m]), U(glb_ptr[m + U(1)])
                if g1 == g0:
                    continue
                wmm = wm[m]
                ym = y[m]
                rk = U(mrank[m])
                base = rk * Su
                for t in range(Su):
                    d[t] = 0.0
                for e in range(g0, g1):
                    d[U(gpos[e])] += glb_der[e]
                    entries[U(lidx[e])] += 1
                gb = U(ublk[s0 + rk])
                e0, e1 = U(loc_ptr[m]), U(loc_ptr[m + U(1)])
                for s in range(Su):
                    wd = wmm * d[s]
                    if wd == 0.0:
                        continue
                    c = U(crow[base + s])
                    gam[c] += wd * ym
                    for e in range(e0, e1):
                        Mt[U(loc_index[e]), c] += wd * loc_der[e]
                    for t in range(Su):
                        dblk[gb, s * Su + t] += wd * d[t]
            _cholesky(G, L, q[r])  # regular: accepted records passed fit_records' test on the same sums
            _forward(L, q[r], u)
            _forward_rows(L, qr, Mt, K)  # Mᵀ = L⁻¹ Hᵀ
            for k in range(qr):
                uk = u[k]
                for i in range(K):
                    gam[i] -= Mt[k, i] * uk  # b_r = γ − M L⁻¹β
            for ia in range(nbr):
                blk = U(ublk[s0 + ia])
                for s in range(Su):
                    lab = bmem[blk, s]
                    if lab >= 0:
                        bsum[lab] += gam[U(crow[ia * Su + s])]
        else:  # in measurement space (Z = A L⁻ᵀ; see _meas_space)
            _meas_space(m0, m1, loc_ptr, loc_index, loc_der, glb_ptr, mrank, gpos, glb_der, lidx, y, wm, qr, nbr,
                        s0, ublk, crow, pairrow, G, L, u, gam, d, jm, jr, dn, dpos, dval, gs, Zt, Zflat, Pflat,
                        tot, dblk, entries, Su, K, cstart, vpos, dden, Qbuf)
            for ia in range(nbr):
                blk = U(ublk[s0 + ia])
                for s in range(Su):
                    lab = bmem[blk, s]
                    if lab >= 0:
                        bsum[lab] += gam[U(crow[ia * Su + s])]
            continue
        if qr == 0:
            continue
        # F = M Mᵀ over the used rows, upper block pairs only: by panels of whole blocks (about PANEL_ROWS rows),
        # each one BLAS product of its rows of M against the rows from its first on (K ~ 100-400, q ~ 20-300)
        Mr = Mflat[: K * qr].reshape((K, qr))
        for k in range(qr):
            for i in range(K):
                Mr[i, k] = Mt[k, i]
        # groups of local parameters: consecutive ones whose columns of M are nonzero in the same blocks
        for k in range(qr):
            for ia in range(nbr):
                nz = False
                for ci in range(U(cstart[ia]), U(cstart[ia + 1])):
                    if Mt[k, ci] != 0.0:
                        nz = True
                        break
                sup[k, ia] = nz
        ng = 0
        gfirst[0] = 0
        for k in range(1, qr):
            same = True
            for ia in range(nbr):
                if sup[k, ia] != sup[k - 1, ia]:
                    same = False
                    break
            if not same:
                ng += 1
                gfirst[ng] = k
        ng += 1
        gfirst[ng] = qr
        if ng == 1:  # one group (a single track): the whole record's product
            _subtract_gram(Mr, K, nbr, cstart, ident, vpos, pairrow, nbr, tot, Fflat, Su)
            continue
        for g in range(ng):
            k0, k1 = U(gfirst[g]), U(gfirst[g + 1])
            nk = k1 - k0
            kg = U(0)
            nblk = 0
            for ia in range(nbr):
                if sup[k0, ia]:
                    gblk[nblk] = ia
                    gstart[nblk] = kg
                    nblk += 1
                    for ci in range(U(cstart[ia]), U(cstart[ia + 1])):
                        gvpos[kg] = vpos[ci]
                        kg += U(1)
            gstart[nblk] = kg
            if kg == 0:
                continue
            Mg = Mgflat[: kg * nk].reshape((kg, nk))
            for a in range(nblk):
                ia = U(gblk[a])
                c0 = U(cstart[ia])
                for ci in range(c0, U(cstart[ia + 1])):
                    row = U(gstart[a]) + ci - c0
                    for k in range(nk):
                        Mg[row, k] = Mr[ci, k0 + k]
            _subtract_gram(Mg, kg, nblk, gstart, gblk, gvpos, pairrow, nbr, tot, Fflat, Su)


@njit(cache=True, nogil=True)
def pair_index(accept: np.ndarray, nb: np.ndarray, ustart: np.ndarray, ublk: np.ndarray, nblocks: int,
               nbig: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The distinct upper block-pair keys a·nbig + b of the accepted records (sorted), the row among them of each
    record's pairs (record by record, triu order; :func:`pair_keys`' keys through ``_unique_inverse``) and the
    position of each record's first pair (−1: none), by a table of all ``nblocks``² pairs instead of a sort of
    the keys (millions for tracks through every CDC layer)."""
    nrec = accept.size
    table = np.full(nblocks * nblocks, -1, np.int32)
    off = np.full(nrec, -1, np.int64)
    n = 0
    for r in range(nrec):
        if accept[r] and nb[r] > 0:
            off[r] = n
            n += nb[r] * (nb[r] + 1) // 2
            s = ustart[r]
            for ia in range(nb[r]):
                a = ublk[s + ia] * nblocks
                for ib in range(ia, nb[r]):
                    table[a + ublk[s + ib]] = 0
    cnt = 0
    for t in range(table.size):  # ids in (a, b) order: the keys' order
        if table[t] == 0:
            table[t] = cnt
            cnt += 1
    uk = np.empty(cnt, np.int64)
    for t in range(table.size):
        if table[t] >= 0:
            uk[table[t]] = (t // nblocks) * nbig + t % nblocks
    kinv = np.empty(n, np.int64)
    for r in range(nrec):
        k = off[r]
        if k < 0:
            continue
        s = ustart[r]
        for ia in range(nb[r]):
            a = ublk[s + ia] * nblocks
            for ib in range(ia, nb[r]):
                kinv[k] = table[a + ublk[s + ib]]
                k += 1
    return uk, kinv, off


@njit(cache=True, nogil=True)
def chunk_structure_wide(rec_ptr: np.ndarray, loc_meas: np.ndarray, loc_index: np.ndarray, glb_meas: np.ndarray,
                         gblk: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """:func:`chunk_structure` (the same results) for records of many blocks: a record's blocks are collected
    unordered and sorted once, and each measurement's rank is looked up in a per-block table (the narrow kernel
    inserts every block in order and searches the rank: O(blocks) per measurement)."""
    n = rec_ptr[rec_ptr.size - 1]
    nrec = rec_ptr.size - 1
    loc_ptr = _meas_ptr(loc_meas, n)
    glb_ptr = _meas_ptr(glb_meas, n)
    q = np.zeros(nrec, np.int64)
    nb = np.zeros(nrec, np.int64)
    ustart = np.zeros(nrec + 1, np.int64)
    ublk = np.empty(glb_meas.size, np.int64)
    mrank = np.full(n, -1, np.int64)
    nblocks = 0
    for e in range(gblk.size):
        nblocks = max(nblocks, gblk[e] + 1)
    rank = np.full(nblocks, -1, np.int64)  # the blocks of the current record: their rank (−1: not in it)
    u = 0
    for r in range(nrec):
        ustart[r] = u
        qr = 0
        nbr = 0
        for m in range(rec_ptr[r], rec_ptr[r + 1]):
            for e in range(loc_ptr[m], loc_ptr[m + 1]):
                qr = max(qr, loc_index[e] + 1)
            g0, g1 = glb_ptr[m], glb_ptr[m + 1]
            if g1 == g0:
                continue
            b = gblk[g0]
            for e in range(g0 + 1, g1):
                if gblk[e] != b:
                    return False, loc_ptr, glb_ptr, q, nb, ustart, ublk, mrank
            if rank[b] < 0:
                rank[b] = 0
                ublk[u + nbr] = b
                nbr += 1
        ublk[u: u + nbr] = np.sort(ublk[u: u + nbr])
        for k in range(nbr):
            rank[ublk[u + k]] = k
        for m in range(rec_ptr[r], rec_ptr[r + 1]):
            if glb_ptr[m + 1] > glb_ptr[m]:
                mrank[m] = rank[gblk[glb_ptr[m]]]
        for k in range(nbr):
            rank[ublk[u + k]] = -1
        q[r] = qr
        nb[r] = nbr
        u += nbr
    ustart[nrec] = u
    return True, loc_ptr, glb_ptr, q, nb, ustart, ublk[:u], mrank
