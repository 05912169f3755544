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

The exports have the signatures of the narrow module's (:mod:`b2luca.alignment.fast_path` hands either module
to :class:`b2luca.alignment.assemble.Assembler`).  Importing this module imports numba; the kernels are cached
on disk like the narrow ones.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._kernels import (U, _cholesky, _forward, _local_solution, _meas_ptr, _reweight, _weight_fraction,
                       chunk_structure, pair_keys)

__all__ = ["accumulate", "chunk_structure", "chunk_structure_wide", "fit_records", "pair_index", "pair_keys"]

#: :func:`pair_index` (a table of every block pair) up to this many label blocks, else a sort of the keys
PAIR_TABLE_BLOCKS = 2048
#: rows of M per product of F = M Mᵀ (whole label blocks): fewer products against the wasted lower triangle
PANEL_ROWS = 48


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


@njit(cache=True, nogil=True)
def accumulate(order: np.ndarray, accept: np.ndarray, rec_ptr: np.ndarray, loc_ptr: np.ndarray, loc_index: np.ndarray,
               loc_der: np.ndarray, glb_ptr: np.ndarray, mrank: np.ndarray, gpos: np.ndarray, glb_der: np.ndarray,
               lidx: np.ndarray, y: np.ndarray, wm: np.ndarray, q: np.ndarray, nb: np.ndarray, ustart: np.ndarray,
               ublk: np.ndarray, bmem: np.ndarray, pair_off: np.ndarray, kinv: np.ndarray, tot: np.ndarray,
               dblk: np.ndarray, bsum: np.ndarray, entries: np.ndarray) -> None:  # pragma: no cover - compiled
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
    dinv = np.zeros(qmax)
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
        for k in range(qr):
            dinv[k] = 1.0 / L[k, k]
        for k in range(qr):  # Mᵀ = L⁻¹ Hᵀ row by row (inner loops over the used rows of M: vectorised)
            for j in range(k):
                c = L[k, j]
                if c == 0.0:  # (another track of the event: L keeps them apart)
                    continue
                for i in range(K):
                    Mt[k, i] -= c * Mt[j, i]
            c = dinv[k]
            uk = u[k]
            for i in range(K):
                Mt[k, i] *= c
                gam[i] -= Mt[k, i] * uk  # b_r = γ − M L⁻¹β
        for ia in range(nbr):
            blk = U(ublk[s0 + ia])
            for s in range(Su):
                lab = bmem[blk, s]
                if lab >= 0:
                    bsum[lab] += gam[U(crow[ia * Su + s])]
        if qr == 0:
            continue
        # F = M Mᵀ over the used rows, upper block pairs only: by panels of whole blocks (about PANEL_ROWS rows),
        # each one BLAS product of its rows of M against the rows from its first on (K ~ 100-400, q ~ 20-300)
        Mr = Mflat[: K * qr].reshape((K, qr))
        for k in range(qr):
            for i in range(K):
                Mr[i, k] = Mt[k, i]
        kp = U(pair_off[r])
        for ia in range(nbr):
            for ib in range(ia, nbr):
                pairrow[ia * nbr + ib] = kinv[kp]
                kp += U(1)
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
