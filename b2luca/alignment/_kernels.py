"""Compiled (numba) kernels of the assembly's single-block fast path.

Records whose measurements each touch one label block, with at most
:data:`~b2luca.alignment.local_fit.SMALL_Q` local parameters and
fewer than ``UNION_MIN_K`` block rows, are fitted and summed record by record here: per record the sums
Γ = Σ w a aᵀ, β = Σ w a y, H = Σ w d aᵀ, γ = Σ w d y and D = Σ w d dᵀ (one pass over its measurements), the
Cholesky factor Γ = L Lᵀ (with the singular test of :func:`b2luca.alignment.local_fit.inverse_root`),
M = H L⁻ᵀ, b_r = γ − M L⁻¹β, χ² = yᵀWy − |L⁻¹β|², and the upper block pairs of D − M Mᵀ added straight
into the chunk's compact pair sums. Everything of one record stays in a few small work arrays (in cache);
nothing is formed per measurement or per entry.

:func:`chunk_structure` finds each record's blocks and local parameter count first. Two passes, so the cuts
stay in numpy (:meth:`b2luca.alignment.assemble.Assembler.compute`): :func:`fit_records`
(local fits and the down-weighting iterations: χ², regular or not, final weights) and, for the accepted records,
:func:`accumulate` (the sums). The kernels release the GIL (the assembly threads run them in parallel) and are
compiled once into numba's on-disk cache (``__pycache__`` next to this file).

:func:`decode_float32` decodes float32 Mille records (no special blocks) record by record for
:mod:`b2luca.alignment.mille`.

Importing this module imports numba, and the first call of each kernel in a process loads it from the cache
(together ~0.5-1 s of CPU; a first, uncached run compiles them: ~5 s): only the decoding of Mille files and the
assembly of a qualifying chunk import it (and :func:`b2luca.alignment.problem.assemble` loads them in a thread
while the first chunks are read).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, uint64

__all__ = ["accumulate", "chunk_structure", "decode_float32", "fit_records", "frame_records", "pair_keys"]

U: Any = uint64  # the kernels' unsigned index type (a numba type: mypy sees a callable)
_PIVOT_REL = 1e-12  # a pivot below this fraction of its diagonal element: Γ singular (as inverse_root)


@njit(cache=True, nogil=True)
def _meas_ptr(meas: np.ndarray, n: int) -> np.ndarray:  # pragma: no cover - compiled
    """CSR pointer (n + 1,) of the non-decreasing measurement ids ``meas`` (entries of measurement m:
    ptr[m]..ptr[m+1])."""
    ptr = np.zeros(n + 1, np.int64)
    for i in range(meas.size):
        ptr[meas[i] + 1] += 1
    for m in range(n):
        ptr[m + 1] += ptr[m]
    return ptr


@njit(cache=True, nogil=True)
def chunk_structure(rec_ptr: np.ndarray, loc_meas: np.ndarray, loc_index: np.ndarray, glb_meas: np.ndarray,
                    gblk: np.ndarray) -> tuple:  # pragma: no cover - compiled
    """The record-block structure of a chunk (entries sorted by measurement; ``gblk``: label block of every
    global entry).

    Returns (single, loc_ptr, glb_ptr, q, nb, ustart, ublk, mrank): single = every measurement's global
    entries lie in one block (else the rest is incomplete); entry pointers per measurement; local parameters
    (highest index + 1) and distinct blocks per record; the record's blocks, ascending, at
    ublk[ustart[r]:ustart[r + 1]]; mrank = the rank of each measurement's block among its record's (−1: no
    global entries)."""
    n = rec_ptr[rec_ptr.size - 1]
    nrec = rec_ptr.size - 1
    loc_ptr = _meas_ptr(loc_meas, n)
    glb_ptr = _meas_ptr(glb_meas, n)
    q = np.zeros(nrec, np.int64)
    nb = np.zeros(nrec, np.int64)
    ustart = np.zeros(nrec + 1, np.int64)
    ublk = np.empty(glb_meas.size, np.int64)
    mrank = np.full(n, -1, np.int64)
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
            k = u + nbr  # insert b into the record's ascending blocks (few: a linear pass)
            while k > u and ublk[k - 1] > b:
                k -= 1
            if k > u and ublk[k - 1] == b:
                continue
            for j in range(u + nbr, k, -1):
                ublk[j] = ublk[j - 1]
            ublk[k] = b
            nbr += 1
        q[r] = qr
        nb[r] = nbr
        u += nbr
        for m in range(rec_ptr[r], rec_ptr[r + 1]):
            g0, g1 = glb_ptr[m], glb_ptr[m + 1]
            if g1 == g0:
                continue
            rank = 0
            while ublk[ustart[r] + rank] != gblk[g0]:
                rank += 1
            mrank[m] = rank
    ustart[nrec] = u
    return True, loc_ptr, glb_ptr, q, nb, ustart, ublk[:u], mrank


@njit(cache=True, nogil=True, inline="always")
def _local_gram(m0: int, m1: int, loc_ptr: np.ndarray, loc_index: np.ndarray, loc_der: np.ndarray,
                y: np.ndarray, wm: np.ndarray, q: int, G: np.ndarray, beta: np.ndarray,
                a: np.ndarray) -> float:  # pragma: no cover - compiled
    """Γ (lower triangle) and β of measurements m0..m1 into G, beta; returns yᵀWy."""
    for i in range(q):
        beta[i] = 0.0
        for j in range(i + 1):
            G[i, j] = 0.0
    ywy = 0.0
    for m in range(m0, m1):
        for i in range(q):
            a[i] = 0.0
        for e in range(loc_ptr[m], loc_ptr[m + 1]):
            a[loc_index[e]] += loc_der[e]
        wmm = wm[m]
        ym = y[m]
        for i in range(q):
            wa = wmm * a[i]
            beta[i] += wa * ym
            for j in range(i + 1):
                G[i, j] += wa * a[j]
        ywy += wmm * ym * ym
    return ywy


@njit(cache=True, nogil=True, inline="always")
def _cholesky(G: np.ndarray, L: np.ndarray, q: int) -> bool:  # pragma: no cover - compiled
    """G = L Lᵀ (lower triangles); False when a pivot is below 1e-12 of its diagonal element (singular)."""
    good = True
    for j in range(q):
        piv = G[j, j]
        for k in range(j):
            piv -= L[j, k] * L[j, k]
        if piv > _PIVOT_REL * abs(G[j, j]):
            d = np.sqrt(piv)
        else:
            good = False
            d = 1.0
        L[j, j] = d
        for i in range(j + 1, q):
            t = G[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / d
    return good


@njit(cache=True, nogil=True, inline="always")
def _forward(L: np.ndarray, q: int, x: np.ndarray) -> None:  # pragma: no cover - compiled
    """x ← L⁻¹ x (lower triangular L)."""
    for i in range(q):
        t = x[i]
        for k in range(i):
            t -= L[i, k] * x[k]
        x[i] = t / L[i, i]


@njit(cache=True, nogil=True, inline="always")
def _reweight(m0: int, m1: int, loc_ptr: np.ndarray, loc_index: np.ndarray, loc_der: np.ndarray, y: np.ndarray,
              w: np.ndarray, u: np.ndarray, it: int, huber_c: float, cauchy_c: float,
              wm: np.ndarray) -> None:  # pragma: no cover - compiled
    """Down-weighting pass ``it`` (>= 1) of one record's measurements m0..m1: new weights ``wm`` from the
    residuals of the previous fit (``u`` holds its local parameters); the first pass Huber, the later Cauchy."""
    for m in range(m0, m1):
        pred = 0.0
        for e in range(loc_ptr[m], loc_ptr[m + 1]):
            pred += loc_der[e] * u[loc_index[e]]
        z = abs(y[m] - pred) * np.sqrt(w[m])
        if it == 1:
            f = huber_c / max(z, 1e-300) if z > huber_c else 1.0
        else:
            f = 1.0 / (1.0 + (z / cauchy_c) ** 2)
        wm[m] = w[m] * f


@njit(cache=True, nogil=True, inline="always")
def _local_solution(G: np.ndarray, L: np.ndarray, u: np.ndarray, qr: int, ywy: float,
                    back: bool) -> tuple[float, bool]:  # pragma: no cover - compiled
    """One record's local fit from its summed Γ (``G``) and β (``u``): (χ², regular); with ``back`` the local
    parameters L⁻ᵀ u are left in ``u`` for the next down-weighting pass (zeros for a singular record)."""
    good = _cholesky(G, L, qr)
    c2 = ywy
    if good:
        _forward(L, qr, u)
        for i in range(qr):
            c2 -= u[i] * u[i]
        if back:
            for i in range(qr - 1, -1, -1):
                t = u[i]
                for k in range(i + 1, qr):
                    t -= L[k, i] * u[k]
                u[i] = t / L[i, i]
    else:
        for i in range(qr):
            u[i] = 0.0
    return c2, good


@njit(cache=True, nogil=True, inline="always")
def _weight_fraction(m0: int, m1: int, wm: np.ndarray, w: np.ndarray) -> float:  # pragma: no cover - compiled
    """Σ (final weight / w) over one record's measurements."""
    s = 0.0
    for m in range(m0, m1):
        s += wm[m] / w[m]
    return s


@njit(cache=True, nogil=True)
def fit_records(rec_ptr: np.ndarray, loc_ptr: np.ndarray, loc_index: np.ndarray, loc_der: np.ndarray,
                y: np.ndarray, w: np.ndarray, q: np.ndarray, iterations: int, huber_c: float,
                cauchy_c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Local fit of every record, with ``iterations`` down-weighting passes (the first Huber, the later ones
    Cauchy, on |r|·√w of the previous fit's residuals r).

    Returns χ² and regular-or-not of the last fit per record, Σ (final weight / w) per record, and the final
    weight of every measurement. A singular record's local parameters are taken as zero (as inverse_root)."""
    nrec = rec_ptr.size - 1
    qmax = 1
    for r in range(nrec):
        qmax = max(qmax, q[r])
    G = np.zeros((qmax, qmax))
    L = np.zeros((qmax, qmax))
    u = np.zeros(qmax)
    a = np.zeros(qmax)
    chi2 = np.empty(nrec)
    ok = np.empty(nrec, np.bool_)
    fsum = np.empty(nrec)
    wm = w.copy()
    for r in range(nrec):
        m0, m1, qr = rec_ptr[r], rec_ptr[r + 1], q[r]
        for it in range(iterations + 1):
            if it > 0:  # new weights from the residuals of the previous fit
                _reweight(m0, m1, loc_ptr, loc_index, loc_der, y, w, u, it, huber_c, cauchy_c, wm)
            ywy = _local_gram(m0, m1, loc_ptr, loc_index, loc_der, y, wm, qr, G, u, a)
            c2, good = _local_solution(G, L, u, qr, ywy, it < iterations)
            chi2[r] = c2
            ok[r] = good
        fsum[r] = _weight_fraction(m0, m1, wm, w)
    return chi2, ok, fsum, wm


@njit(cache=True, nogil=True)
def pair_keys(accept: np.ndarray, nb: np.ndarray, ustart: np.ndarray, ublk: np.ndarray,
              nbig: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Upper block-pair keys a·nbig + b (record by record, triu order) of the accepted records, and the
    position of each record's first key (−1: none)."""
    nrec = accept.size
    off = np.full(nrec, -1, np.int64)
    n = 0
    for r in range(nrec):
        if accept[r] and nb[r] > 0:
            off[r] = n
            n += nb[r] * (nb[r] + 1) // 2
    keys = np.empty(n, np.int64)
    for r in range(nrec):
        k = off[r]
        if k < 0:
            continue
        s = ustart[r]
        for ia in range(nb[r]):
            for ib in range(ia, nb[r]):
                keys[k] = ublk[s + ia] * nbig + ublk[s + ib]
                k += 1
    return keys, off


@njit(cache=True, nogil=True)
def accumulate(order: np.ndarray, accept: np.ndarray, rec_ptr: np.ndarray, loc_ptr: np.ndarray, loc_index: np.ndarray,
               loc_der: np.ndarray, glb_ptr: np.ndarray, mrank: np.ndarray, gpos: np.ndarray, glb_der: np.ndarray,
               lidx: np.ndarray, y: np.ndarray, wm: np.ndarray, q: np.ndarray, nb: np.ndarray, ustart: np.ndarray,
               ublk: np.ndarray, bmem: np.ndarray, pair_off: np.ndarray, kinv: np.ndarray, tot: np.ndarray,
               dblk: np.ndarray, bsum: np.ndarray, entries: np.ndarray) -> None:  # pragma: no cover - compiled
    """Add the accepted records' (taken in ``order``) Schur complements and right-hand sides (weights ``wm``) to the chunk's sums.

    ``tot`` (distinct pairs, S·S): −Σ M Mᵀ per upper block pair, row ``kinv[pair_off[r] + pair]`` for record
    r; ``dblk`` (blocks, S·S): Σ w d dᵀ per global block; ``bsum`` (labels): Σ b_r; ``entries`` (labels):
    global entries. ``mrank``: rank of the measurement's block among its record's; ``gpos``: position of
    each global entry in its block."""
    nrec = accept.size
    S = bmem.shape[1]
    qmax, kmax = 1, 1
    for r in range(nrec):
        if accept[r]:
            qmax = max(qmax, q[r])
            kmax = max(kmax, nb[r] * S)
    G = np.zeros((qmax, qmax))
    L = np.zeros((qmax, qmax))
    u = np.zeros(qmax)
    a = np.zeros(qmax)
    dinv = np.zeros(qmax)
    Mt = np.zeros((qmax, kmax))  # Hᵀ, then Mᵀ = L⁻¹ Hᵀ in place
    F = np.zeros((kmax, kmax))
    gam = np.zeros(kmax)
    d = np.zeros(S)
    # unsigned indices in the loops below: numba checks every signed index for wrap-around (negative
    # values), which keeps LLVM from vectorising them (measured: the F loop 3x faster)
    Su = U(S)
    for r in order:
        if not accept[r] or nb[r] == 0:
            continue
        m0, m1, qr, nbr = U(rec_ptr[r]), U(rec_ptr[r + 1]), U(q[r]), U(nb[r])
        K = nbr * Su
        s0 = U(ustart[r])
        for i in range(K):
            gam[i] = 0.0
        for k in range(qr):
            for i in range(K):
                Mt[k, i] = 0.0
        for i in range(qr):
            u[i] = 0.0
            for j in range(i + U(1)):
                G[i, j] = 0.0
        for m in range(m0, m1):
            for i in range(qr):
                a[i] = 0.0
            for e in range(U(loc_ptr[m]), U(loc_ptr[m + U(1)])):
                a[U(loc_index[e])] += loc_der[e]
            wmm = wm[m]
            ym = y[m]
            for i in range(qr):
                wa = wmm * a[i]
                u[i] += wa * ym
                for j in range(i + U(1)):
                    G[i, j] += wa * a[j]
            g0, g1 = U(glb_ptr[m]), U(glb_ptr[m + U(1)])
            if g1 == g0:
                continue
            rk = U(mrank[m])
            base = rk * Su
            for t in range(Su):
                d[t] = 0.0
            for e in range(g0, g1):
                d[U(gpos[e])] += glb_der[e]
                entries[U(lidx[e])] += 1
            gb = U(ublk[s0 + rk])
            for s in range(Su):
                wd = wmm * d[s]
                if wd == 0.0:
                    continue
                gam[base + s] += wd * ym
                for k in range(qr):
                    Mt[k, base + s] += wd * a[k]
                for t in range(Su):
                    dblk[gb, s * Su + t] += wd * d[t]
        _cholesky(G, L, q[r])  # regular: accepted records passed fit_records' test on the same sums
        _forward(L, q[r], u)
        for k in range(qr):
            dinv[k] = 1.0 / L[k, k]
        for k in range(qr):  # Mᵀ = L⁻¹ Hᵀ row by row (inner loops over the K rows of M: vectorised)
            for j in range(k):
                c = L[k, j]
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
                    bsum[lab] += gam[ia * Su + s]
        if qr == 0:
            continue
        for ia in range(nbr):  # F = M Mᵀ, the upper block pairs (contiguous inner loops)
            j0 = ia * Su
            for s in range(Su):
                i = j0 + s
                for j in range(j0, K):
                    F[i, j] = 0.0
                for k in range(qr):
                    c = Mt[k, i]
                    for j in range(j0, K):
                        F[i, j] += c * Mt[k, j]
        kp = U(pair_off[r])
        for ia in range(nbr):
            for ib in range(ia, nbr):
                row = U(kinv[kp])
                kp += U(1)
                for s in range(Su):
                    for t in range(Su):
                        tot[row, s * Su + t] -= F[ia * Su + s, ib * Su + t]


@njit(cache=True, nogil=True)
def frame_records(words: np.ndarray, fortran: bool, max_nw: int) -> tuple:  # pragma: no cover - compiled
    """The whole, well-formed records at the start of the int32 ``words`` of a Mille buffer, walked from one
    record's length word to the next: (starts, nw, end) = the word index of each record's length word (the
    ``RawChunk`` layout), its word count (negative: double precision), and the word where the walk stopped
    (the end of the last record framed).

    A record is taken when its length word is even, non-zero and below ``max_nw`` in size, it fits in
    ``words``, its header pair is (0.0, 0) (two float words for double precision), the pair after the header
    is a value (int 0) when there is one, and for a Fortran file both record markers equal its byte length;
    the walk stops at the first record that is not (the caller tells an incomplete record from a corrupt one)."""
    off = 1 if fortran else 0
    nwords = words.size
    cap = nwords // 3 + 1  # the shortest record: length word, one float, one int
    starts = np.empty(cap, np.int64)
    nws = np.empty(cap, np.int64)
    k = 0
    p = 0
    while p + off + 1 < nwords:
        cnw = int(words[p + off])
        if cnw == 0 or cnw % 2 != 0 or cnw >= max_nw or cnw <= -max_nw or words[p + off + 1] != 0:
            break
        n = abs(cnw) // 2
        fw = n if cnw > 0 else 2 * n
        body = 1 + fw + n
        reclen = body + 2 * off
        if p + reclen > nwords:
            break
        if fortran and (words[p] != 4 * body or words[p + reclen - 1] != 4 * body):
            break
        if cnw < 0 and words[min(p + off + 2, nwords - 1)] != 0:
            break
        if words[p + off + 1 + fw] != 0 or (n >= 2 and words[p + off + 2 + fw] != 0):
            break
        starts[k] = p + off
        nws[k] = cnw
        k += 1
        p += reclen
    return starts[:k], nws[:k], p


@njit(cache=True, nogil=True)
def decode_float32(words: np.ndarray, wf: np.ndarray, starts: np.ndarray, nw: np.ndarray) -> tuple:  # pragma: no cover
    """Decode float32 Mille records (C layout at word ``starts``, ``nw`` words each; ``wf``: the same words
    as float32) record by record.

    A record's pairs (float, int) are: the header (int 0), then per measurement the value (int 0), its local
    derivatives (int = index + 1), the sigma (int 0) and its global derivatives (int = label).
    Returns (status, record, sigma, arrays): status 0 = decoded (arrays: rec_ptr, value, sigma, loc_meas,
    loc_index, loc_der, glb_meas, glb_label, glb_der); 1 = a special block (a (0.0, 0) pair followed by a
    negative float with int 0, not at a header): for the general decoder; 2 = malformed pair sequence in
    ``record`` (an even number of int-0 pairs, no value after the header, or else a negative int);
    3 = non-positive ``sigma`` in ``record``."""
    nrec = starts.size
    first_bad, first_neg = -1, -1
    n_val = n_loc = n_glb = 0
    prev_zero, prev_f, prev_hdr = False, 0.0, False
    for r in range(nrec):
        n = nw[r] // 2
        f0 = starts[r] + 1
        i0 = f0 + n
        zeros = 0
        for p in range(n):
            iv = words[i0 + p]
            fv = wf[f0 + p]
            if iv == 0:
                if prev_zero and prev_f == 0.0 and fv < 0 and not prev_hdr:
                    return 1, -1, 0.0, _empty_records()
                zeros += 1
                if zeros % 2 == 0:
                    n_val += 1
            elif iv < 0:
                if first_neg < 0:
                    first_neg = r
            elif zeros % 2 == 0:
                n_loc += 1
            else:
                n_glb += 1
            prev_zero, prev_f, prev_hdr = iv == 0, fv, p == 0
        if first_bad < 0 and (zeros % 2 == 0 or (n >= 2 and words[i0 + 1] != 0)):
            first_bad = r
    if first_bad >= 0 or first_neg >= 0:
        return 2, first_bad if first_bad >= 0 else first_neg, 0.0, _empty_records()
    rec_ptr = np.zeros(nrec + 1, np.int64)
    value = np.empty(n_val)
    sigma = np.empty(n_val)
    loc_meas = np.empty(n_loc, np.int64)
    loc_index = np.empty(n_loc, np.int32)
    loc_der = np.empty(n_loc)
    glb_meas = np.empty(n_glb, np.int64)
    glb_label = np.empty(n_glb, np.int64)
    glb_der = np.empty(n_glb)
    m = -1
    kl = kg = 0
    for r in range(nrec):
        n = nw[r] // 2
        f0 = starts[r] + 1
        i0 = f0 + n
        zeros = 0
        for p in range(n):
            iv = words[i0 + p]
            fv = wf[f0 + p]
            if iv == 0:
                zeros += 1
                if zeros == 1:
                    continue  # header
                if zeros % 2 == 0:
                    m += 1
                    value[m] = fv
                else:
                    sigma[m] = fv
                    if fv <= 0:  # (NaN passes: a non-finite record, dropped by the caller)
                        return 3, r, np.float64(fv), _empty_records()
            elif zeros % 2 == 0:
                loc_meas[kl] = m
                loc_index[kl] = iv - 1
                loc_der[kl] = fv
                kl += 1
            else:
                glb_meas[kg] = m
                glb_label[kg] = iv
                glb_der[kg] = fv
                kg += 1
        rec_ptr[r + 1] = m + 1
    return 0, -1, 0.0, (rec_ptr, value, sigma, loc_meas, loc_index, loc_der, glb_meas, glb_label, glb_der)


@njit(cache=True, nogil=True, inline="always")
def _empty_records() -> tuple:  # pragma: no cover - compiled
    z, zi = np.zeros(0), np.zeros(0, np.int64)
    return (np.zeros(1, np.int64), z, z, zi, np.zeros(0, np.int32), z, zi, zi, z)
