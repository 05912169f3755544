"""Compiled kernels of the track fit: the predictions of the measurement rows and their analytic derivatives
(helix parameters: :func:`vxd_rows`, :func:`cdc_rows`; scattering kinks: :func:`kink_columns`), and per track
the seeds (:func:`seeds`), the kinks' helix Jacobians and widths (:func:`kink_jacobians`), the rows' helices
(:func:`kinked_rows`) and one Gauss-Newton step with the helix covariance (:func:`normal_steps`,
:func:`solve_scaled`).

One pass per row (numba, ``@njit(cache=True, nogil=True, error_model="numpy")``) instead of some fifty numpy
operations over all rows with their temporaries.  ``error_model="numpy"``: a division by zero (a track parallel to
a sensor plane, tangent to a layer cylinder) gives inf/NaN as numpy does, and the fit leaves that candidate out,
instead of raising ZeroDivisionError.  The formulas are those of :mod:`b2luca.reco.helix` (helix position and
direction, plane and cylinder crossings, the position Jacobian at fixed arc length),
:func:`b2luca.reco.geometry.cdc_drift_distance` (written as dy cos(phi_w) - dx sin(phi_w), which needs no
arctan2) and :meth:`b2luca.reco.fit._Predictor.jacobian`; the numbers agree with the numpy versions to
round-off (``tests/reco/test_fit_kernels.py``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["cdc_rows", "kink_columns", "kink_jacobians", "kinked_rows", "normal_steps", "seeds", "solve_scaled", "vxd_rows"]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _point(d0: float, s0: float, c0: float, om: float, z0: float, tl: float, s: float, pt: np.ndarray) -> None:  # pragma: no cover
    """The helix at arc length s (``s0``, ``c0``: sin and cos of phi0): pt[0:3] position, pt[3:6] direction
    (d/ds), pt[6:10] k = s sinc(om s / 2), dk/domega, cos and sin of phi0 - om s / 2.  Two trigonometric
    calls (of om s / 2); the angles phi0 - om s / 2 and phi0 - om s by the addition theorems."""
    half = 0.5 * om * s
    sh, ch = math.sin(half), math.cos(half)
    k = s if half == 0.0 else s * (sh / half)
    if abs(half) < 1e-3:  # d(sin(x)/x)/dx without cancellation
        dsinc = half * (half * half / 30.0 - 1.0 / 3.0)
    else:
        dsinc = (half * ch - sh) / (half * half)
    cph = c0 * ch + s0 * sh
    sph = s0 * ch - c0 * sh
    pt[0] = d0 * s0 + k * cph
    pt[1] = -d0 * c0 + k * sph
    pt[2] = z0 + s * tl
    pt[3] = cph * ch + sph * sh
    pt[4] = sph * ch - cph * sh
    pt[5] = tl
    pt[6] = k
    pt[7] = 0.5 * s * s * dsinc
    pt[8] = cph
    pt[9] = sph


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _projected(d0: float, s0: float, c0: float, s: float, pt: np.ndarray, wx: float, wy: float, wz: float,
               jac: np.ndarray, i: int) -> None:  # pragma: no cover - compiled
    """jac[i] = w . d(position)/d(h) at fixed s (:func:`b2luca.reco.helix.projected_position_jacobian`), from
    :func:`_point`'s pt."""
    k, dk, cph, sph = pt[6], pt[7], pt[8], pt[9]
    jac[i, 0] = wx * s0 - wy * c0
    jac[i, 1] = d0 * (wx * c0 + wy * s0) + k * (wy * cph - wx * sph)
    jac[i, 2] = dk * (wx * cph + wy * sph) + 0.5 * s * k * (wx * sph - wy * cph)
    jac[i, 3] = wz
    jac[i, 4] = wz * s


@njit(cache=True, nogil=True, error_model="numpy")
def vxd_rows(h: np.ndarray, rows: np.ndarray, s_start: np.ndarray, n_iter: int, c: np.ndarray, r: np.ndarray,
             axis: np.ndarray, pred: np.ndarray, s_out: np.ndarray, jac: np.ndarray) -> np.ndarray:  # pragma: no cover
    """The VXD rows ``rows`` (N,) of the helices ``h`` (R, 5): Newton start ``s_start`` (N,), ``n_iter`` Newton
    steps onto the sensor planes (centres ``c`` (N, 3), rotations ``r`` (N, 3, 3), columns = local u, v, w
    axes), measured local ``axis`` (0 u, 1 v).  Writes the prediction, the arc length and d(pred)/d(h) into
    rows ``rows`` of ``pred`` (R,), ``s_out`` (R,), ``jac`` (R, 5); returns the local track state (N, 4): u, v,
    du/dw, dv/dw."""
    n = rows.size
    local = np.empty((n, 4))
    pt = np.empty(10)
    for k in range(n):
        i = rows[k]
        d0, phi0, om, z0, tl = h[i, 0], h[i, 1], h[i, 2], h[i, 3], h[i, 4]
        s0, c0 = math.sin(phi0), math.cos(phi0)
        nx, ny, nz = r[k, 0, 2], r[k, 1, 2], r[k, 2, 2]
        s = s_start[k]
        for _ in range(n_iter):
            _point(d0, s0, c0, om, z0, tl, s, pt)
            f = (pt[0] - c[k, 0]) * nx + (pt[1] - c[k, 1]) * ny + (pt[2] - c[k, 2]) * nz
            df = pt[3] * nx + pt[4] * ny + pt[5] * nz
            s = s - f / df
        _point(d0, s0, c0, om, z0, tl, s, pt)
        ex, ey, ez = pt[0] - c[k, 0], pt[1] - c[k, 1], pt[2] - c[k, 2]
        u = r[k, 0, 0] * ex + r[k, 1, 0] * ey + r[k, 2, 0] * ez
        v = r[k, 0, 1] * ex + r[k, 1, 1] * ey + r[k, 2, 1] * ez
        du = r[k, 0, 0] * pt[3] + r[k, 1, 0] * pt[4] + r[k, 2, 0] * pt[5]
        dv = r[k, 0, 1] * pt[3] + r[k, 1, 1] * pt[4] + r[k, 2, 1] * pt[5]
        dw = nx * pt[3] + ny * pt[4] + nz * pt[5]
        a = axis[k]
        pred[i] = u if a == 0 else v
        s_out[i] = s
        local[k, 0], local[k, 1], local[k, 2], local[k, 3] = u, v, du / dw, dv / dw
        # d(pred)/dh = w . dx/dh|_s with w = g - (g.t / n.t) n: the crossing stays on the plane
        gx, gy, gz = r[k, 0, a], r[k, 1, a], r[k, 2, a]
        ratio = (gx * pt[3] + gy * pt[4] + gz * pt[5]) / dw
        _projected(d0, s0, c0, s, pt, gx - ratio * nx, gy - ratio * ny, gz - ratio * nz, jac, i)
    return local


@njit(cache=True, nogil=True, error_model="numpy")
def cdc_rows(h: np.ndarray, rows: np.ndarray, arm: np.ndarray, radius: np.ndarray, stereo: np.ndarray,
             phi_offset: np.ndarray, wire_phi: np.ndarray, par: np.ndarray, pred: np.ndarray, s_out: np.ndarray,
             jac: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    """The CDC rows ``rows`` (N,) of the helices ``h`` (R, 5) crossing their layer cylinders (``radius`` (N,), on
    the side ``arm`` (R,)); the signed drift distance to the wire (layer ``stereo`` slope, ``phi_offset``, the
    wire's azimuth ``wire_phi``, layer alignment ``par`` (N, 3) = dx, dy, dphi).  Writes the prediction, the
    arc length and d(pred)/d(h) into rows ``rows`` of ``pred`` (R,), ``s_out`` (R,), ``jac`` (R, 5); returns the
    crossing points (N, 3).  NaN where the helix does not reach the layer."""
    n = rows.size
    xs = np.empty((n, 3))
    pt = np.empty(10)
    for k in range(n):
        i = rows[k]
        d0, phi0, om, z0, tl = h[i, 0], h[i, 1], h[i, 2], h[i, 3], h[i, 4]
        rr = radius[k]
        denom = 1.0 + om * d0
        q = (rr * rr - d0 * d0) / denom if denom != 0.0 else math.nan
        ok = q >= 0.0 and denom > 0.0
        a = 0.5 * abs(om) * math.sqrt(q) if ok else 0.5
        if not ok or a > 1.0:
            pred[i] = s_out[i] = math.nan
            jac[i, :] = math.nan
            xs[k, :] = math.nan
            continue
        root = math.sqrt(q)
        s = arm[i] * root * (1.0 if a < 1e-8 else math.asin(a) / a)
        s0, c0 = math.sin(phi0), math.cos(phi0)
        _point(d0, s0, c0, om, z0, tl, s, pt)
        x, y, z = pt[0], pt[1], pt[2]
        dx, dy = x - par[k, 0], y - par[k, 1]
        # the wire's azimuth at z (stereo layers) in the aligned layer frame; the drift distance
        # rho sin(phi - phi_w) = dy cos(phi_w) - dx sin(phi_w)
        st = stereo[k] / rr
        phi_w = phi_offset[k] + z * st + wire_phi[k] + par[k, 2]
        cw, sw = math.cos(phi_w), math.sin(phi_w)
        pred[i] = dy * cw - dx * sw
        s_out[i] = s
        xs[k, 0], xs[k, 1], xs[k, 2] = x, y, z
        # d(pred)/dx, projected along the cylinder
        gx, gy, gz = -sw, cw, -(dx * cw + dy * sw) * st
        ratio = (gx * pt[3] + gy * pt[4] + gz * pt[5]) / (x * pt[3] + y * pt[4])
        _projected(d0, s0, c0, s, pt, gx - ratio * x, gy - ratio * y, gz, jac, i)
    return xs


@njit(cache=True, nogil=True, error_model="numpy")
def kink_columns(d: np.ndarray, j2: np.ndarray, track_arm: np.ndarray, n_before: np.ndarray, slot: np.ndarray,
                 loc: np.ndarray) -> None:  # pragma: no cover - compiled
    """The kink columns of the local derivatives, in place: ``loc[i, 5 + 2 N slot[i] + c] = d[i] . j2[track_arm[i], :,
    c]`` for the kink angles c of the scatterers before the hit (``c // 2 < n_before[i]``), where d (R, 5) =
    d(pred)/d(helix), j2 (T * arms, 5, 2 N) the kinks' helix Jacobians (N scatterers per arm); other columns stay."""
    nc = j2.shape[2]
    for i in range(d.shape[0]):
        j = track_arm[i]
        off = 5 + nc * slot[i]
        last = min(2 * n_before[i], nc)
        for c in range(last):
            loc[i, off + c] = (d[i, 0] * j2[j, 0, c] + d[i, 1] * j2[j, 1, c] + d[i, 2] * j2[j, 2, c]
                               + d[i, 3] * j2[j, 3, c] + d[i, 4] * j2[j, 4, c])


@njit(cache=True, nogil=True, error_model="numpy")
def solve_scaled(a: np.ndarray, rhs: np.ndarray, fac: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Solve ``a x = rhs`` (a (n, n) symmetric, its lower triangle is read) in place of ``rhs`` (n, k): Cholesky
    into ``fac`` (n, n); where a pivot is not positive (NaN, or round-off on a singular matrix) Gaussian
    elimination with partial pivoting on ``a`` instead (as LAPACK's gesv, which ``np.linalg.solve`` calls;
    a zero pivot gives inf/NaN).  Returns whether the Cholesky factor was used."""
    n, k = rhs.shape
    chol = True
    for j in range(n):
        d = a[j, j]
        for p in range(j):
            d -= fac[j, p] * fac[j, p]
        if not d > 0.0:
            chol = False
            break
        dj = math.sqrt(d)
        fac[j, j] = dj
        for i in range(j + 1, n):
            v = a[i, j]
            for p in range(j):
                v -= fac[i, p] * fac[j, p]
            fac[i, j] = v / dj
    if chol:
        for c in range(k):
            for i in range(n):  # L y = rhs
                v = rhs[i, c]
                for p in range(i):
                    v -= fac[i, p] * rhs[p, c]
                rhs[i, c] = v / fac[i, i]
            for i in range(n - 1, -1, -1):  # L^T x = y
                v = rhs[i, c]
                for p in range(i + 1, n):
                    v -= fac[p, i] * rhs[p, c]
                rhs[i, c] = v / fac[i, i]
        return True
    for i in range(n):  # the full symmetric matrix
        for j in range(i + 1):
            fac[i, j] = a[i, j]
            fac[j, i] = a[i, j]
    for j in range(n):
        piv = j
        big = abs(fac[j, j])
        for i in range(j + 1, n):
            if abs(fac[i, j]) > big:
                big, piv = abs(fac[i, j]), i
        if piv != j:
            for q in range(n):
                fac[j, q], fac[piv, q] = fac[piv, q], fac[j, q]
            for c in range(k):
                rhs[j, c], rhs[piv, c] = rhs[piv, c], rhs[j, c]
        for i in range(j + 1, n):
            f = fac[i, j] / fac[j, j]
            for q in range(j + 1, n):
                fac[i, q] -= f * fac[j, q]
            for c in range(k):
                rhs[i, c] -= f * rhs[j, c]
    for c in range(k):
        for i in range(n - 1, -1, -1):
            v = rhs[i, c]
            for q in range(i + 1, n):
                v -= fac[i, q] * rhs[q, c]
            rhs[i, c] = v / fac[i, i]
    return False


@njit(cache=True, nogil=True, error_model="numpy")
def normal_steps(d: np.ndarray, res: np.ndarray, w: np.ndarray, starts: np.ndarray, n_before: np.ndarray,
                 slot: np.ndarray, jk: np.ndarray, ws: np.ndarray, theta: np.ndarray, want_cov: bool, done: np.ndarray,
                 step: np.ndarray, scale: np.ndarray, chi2: np.ndarray, cov: np.ndarray) -> None:  # pragma: no cover
    """One Gauss-Newton step of every track, straight from its rows (rows ``starts[t]:starts[t + 1]``: d(pred)/d(helix)
    ``d`` (R, 5), residuals ``res`` (R,), weights ``w`` (R,), zero for the rows left out; ``n_before`` (R,) the
    scatterers between the perigee and the hit, ``slot`` (R,) its arm) and the kinks (``jk`` (T, arms, N, 5, 2):
    the helix Jacobians of the N scatterers' kinks of each arm, prior weights ``ws`` (T, nk), angles ``theta``
    (T, nk), nk = arms 2 N; nk = 0 and ``jk`` (T, 0, 0, 5, 2) without scattering).

    The local derivatives of a row are l = d [I, J_k for the kinks before the hit] (the columns of
    :func:`kink_columns`), so the normal matrix A = sum w l l^T + diag(0, ws) is formed from the 5x5 sums
    S_j = sum w d d^T over the rows after scatterer j: A_hh = S_-1, A_h,k = S_j J_k, A_k,k' = J_k^T S_max(j,j') J_k'
    (no (R, nl) matrix); b = sum w l r - (0, ws theta), chi2 = sum w r^2 + sum ws theta^2.  A is scaled to a unit
    diagonal (``scale`` = 1/sqrt(diag), 1 where the diagonal is 0: such a parameter gets a unit diagonal, the
    others a 1e-12 ridge) and solved by Cholesky.  Writes ``step`` (T, nl, in units of ``scale``), ``scale``
    (T, nl), ``chi2`` (T,) and ``cov`` (T, 5, 5), the helix block of the inverse of A (the kinks profiled), of
    the tracks that may be converged (``done`` (T,) or their step below 1e-3 of the errors; all of them with
    ``want_cov``); the other tracks' ``cov`` stays as it is."""
    nt = starts.size - 1
    narm, nsc = jk.shape[1], jk.shape[2]
    nl = 5 + 2 * narm * nsc
    nk = ws.shape[1]
    a = np.empty((nl, nl))
    fac = np.empty((nl, nl))
    rhs = np.empty((nl, 1))
    e5 = np.empty((nl, 5))
    b = np.empty(nl)
    free = np.empty(nl, np.bool_)
    ng = max(narm, 1)
    sg = np.empty((ng, nsc + 1, 5, 5))  # sum w d d^T of the rows with n_before = g, per arm
    bg = np.empty((ng, nsc + 1, 5))  # sum w d r
    u = np.empty((5, 5))
    bu = np.empty(5)
    v = np.empty((nsc, 2, 5))  # S_j J_k of the kinks of scatterer j
    for t in range(nt):
        sg[:] = 0.0
        bg[:] = 0.0
        c2 = 0.0
        for i in range(starts[t], starts[t + 1]):
            wi = w[i]
            if wi == 0.0:
                continue
            ia = slot[i] if narm > 0 else 0
            g = min(n_before[i], nsc)
            wr = wi * res[i]
            c2 += wr * res[i]
            for p in range(5):
                wd = wi * d[i, p]
                bg[ia, g, p] += d[i, p] * wr
                for q in range(p + 1):
                    sg[ia, g, p, q] += wd * d[i, q]
        a[:, :] = 0.0
        b[:] = 0.0
        for ia in range(ng):
            for g in range(nsc + 1):
                for p in range(5):
                    b[p] += bg[ia, g, p]
                    for q in range(p + 1):
                        a[p, q] += sg[ia, g, p, q]
        for ia in range(narm):
            u[:, :] = 0.0
            bu[:] = 0.0
            for j in range(nsc - 1, -1, -1):  # u = S_j: the rows after scatterer j (n_before > j)
                for p in range(5):
                    bu[p] += bg[ia, j + 1, p]
                    for q in range(p + 1):
                        u[p, q] += sg[ia, j + 1, p, q]
                        u[q, p] = u[p, q]
                for x in range(2):
                    col = 5 + 2 * (ia * nsc + j) + x
                    bk = 0.0
                    for p in range(5):
                        vp = 0.0
                        for q in range(5):
                            vp += u[p, q] * jk[t, ia, j, q, x]
                        v[j, x, p] = vp
                        a[col, p] = vp
                        bk += jk[t, ia, j, p, x] * bu[p]
                    b[col] = bk
            for j2 in range(nsc):  # A_k,k' = J_k^T S_max(j, j') J_k' (lower triangle: j <= j2)
                for x2 in range(2):
                    c2col = 5 + 2 * (ia * nsc + j2) + x2
                    for j in range(j2 + 1):
                        for x in range(2):
                            ccol = 5 + 2 * (ia * nsc + j) + x
                            if ccol > c2col:
                                continue
                            e = 0.0
                            for p in range(5):
                                e += jk[t, ia, j, p, x] * v[j2, x2, p]
                            a[c2col, ccol] = e
        for k in range(nk):
            a[5 + k, 5 + k] += ws[t, k]
            b[5 + k] -= ws[t, k] * theta[t, k]
            c2 += ws[t, k] * theta[t, k] * theta[t, k]
        chi2[t] = c2
        for j in range(nl):
            dj = a[j, j]
            free[j] = not dj > 0.0  # 0 (or NaN): no measurement constrains it
            scale[t, j] = 1.0 if free[j] else 1.0 / math.sqrt(dj)
        for i in range(nl):
            for j in range(i + 1):
                a[i, j] *= scale[t, i] * scale[t, j]
            a[i, i] += 1.0 if free[i] else 1e-12
            rhs[i, 0] = b[i] * scale[t, i]
        solve_scaled(a, rhs, fac)
        for j in range(nl):
            step[t, j] = rhs[j, 0]
        small = True
        for j in range(nl):
            small = small and abs(step[t, j]) < 1e-3  # False for a NaN
        if want_cov or done[t] or small:
            e5[:, :] = 0.0
            for c in range(5):
                e5[c, c] = 1.0
            solve_scaled(a, e5, fac)
            for i in range(5):
                for c in range(5):
                    cov[t, i, c] = e5[i, c] * scale[t, i] * scale[t, c]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _kinked(px: float, py: float, pz: float, cl: float, sl: float, cp: float, sp: float, om: float, t1: float,
            t2: float, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """:func:`b2luca.reco.helix.apply_kink` of one helix (the same formulas, with
    :func:`~b2luca.reco.helix.from_point`) from the helix's point ``px, py, pz`` at the kink, cos and sin of its
    dip angle (``cl``, ``sl``) and of its direction's azimuth there (``cp``, ``sp``), its curvature ``om``: the
    helix after the kink (t1, t2), into ``out`` (5,); out[1] = phi0 unwrapped."""
    tx = cl * cp - t1 * sp - t2 * sl * cp
    ty = cl * sp + t1 * cp - t2 * sl * sp
    tz = sl + t2 * cl
    ptn = math.hypot(tx, ty)
    norm = math.sqrt(ptn * ptn + tz * tz)
    omega = om * cl / (ptn / norm)
    tanl = tz / ptn
    cphi, sphi = tx / ptn, ty / ptn
    u = px * sphi - py * cphi
    t = px * cphi + py * sphi
    a = 1.0 + omega * u
    root = math.sqrt(a * a + (omega * t) ** 2)
    chi = math.atan2(omega * t, a)
    if abs(chi) < 1e-6:
        s_p = t * (1.0 - (omega * t) ** 2 / (3 * a * a)) / a
    elif abs(omega) > 1e-12:
        s_p = chi / omega
    else:
        s_p = t
    out[0] = (2.0 * u + omega * (u * u + t * t)) / (1.0 + root)
    out[1] = math.atan2(ty, tx) + chi
    out[2] = omega
    out[3] = pz - s_p * tanl
    out[4] = tanl


@njit(cache=True, nogil=True, error_model="numpy")
def kink_jacobians(h: np.ndarray, arms: np.ndarray, radii: np.ndarray, x0s: np.ndarray, p: np.ndarray,
                   mass: np.ndarray, eps: float, jac: np.ndarray, sig: np.ndarray) -> None:  # pragma: no cover
    """:func:`b2luca.reco.fit._kink_jacobians` compiled: for every track of ``h`` (T, 5), arm and scatterer
    (cylinder ``radii`` (N,), thickness ``x0s`` (N,)), the central differences (steps +-``eps``) of the helix
    after a kink in both angles into ``jac`` (T, arms, N, 5, 2) and the Highland width (momentum ``p`` (T,),
    ``mass`` (T,)) into ``sig`` (T, arms, N); 0 and 1 where the helix does not reach the cylinder."""
    hp = np.empty(5)
    hm = np.empty(5)
    for i in range(h.shape[0]):
        d0, phi0, om, z0, tl = h[i, 0], h[i, 1], h[i, 2], h[i, 3], h[i, 4]
        denom = 1.0 + om * d0
        beta = p[i] / math.sqrt(p[i] * p[i] + mass[i] * mass[i])
        lam = math.atan(tl)
        cl, sl = math.cos(lam), math.sin(lam)
        s0, c0 = math.sin(phi0), math.cos(phi0)
        for ia in range(arms.size):
            for j in range(radii.size):
                # cylinder_crossing
                q = (radii[j] * radii[j] - d0 * d0) / denom
                root = math.sqrt(q) if q >= 0.0 else math.nan
                a = 0.5 * abs(om) * root
                if not (q >= 0.0 and a <= 1.0 and denom > 0.0):
                    jac[i, ia, j, :, :] = 0.0
                    sig[i, ia, j] = 1.0
                    continue
                s = arms[ia] * root * (1.0 if a < 1e-8 else math.asin(a) / a)
                # the helix at the kink (position, direction): the same for the four steps
                half = 0.5 * om * s
                ph = phi0 - half
                k = s if half == 0.0 else s * (math.sin(half) / half)
                px = d0 * s0 + k * math.cos(ph)
                py = -d0 * c0 + k * math.sin(ph)
                pz = z0 + s * tl
                phi = phi0 - om * s
                cp, sp = math.cos(phi), math.sin(phi)
                for c in range(2):
                    t1 = eps if c == 0 else 0.0
                    t2 = eps if c == 1 else 0.0
                    _kinked(px, py, pz, cl, sl, cp, sp, om, t1, t2, hp)
                    _kinked(px, py, pz, cl, sl, cp, sp, om, -t1, -t2, hm)
                    for q5 in range(5):
                        jac[i, ia, j, q5, c] = (hp[q5] - hm[q5]) / (2 * eps)
                    dphi = hp[1] - hm[1]
                    jac[i, ia, j, 1, c] = math.atan2(math.sin(dphi), math.cos(dphi)) / (2 * eps)
                # scatter_sigma: the path through the layer grows with 1/|cos(incidence)| (capped at 20)
                cos_inc = abs(cl * math.cos(phi - math.atan2(py, px)))
                x = max(x0s[j] / max(cos_inc, 0.05), 1e-12)
                sig[i, ia, j] = 0.0136 / (beta * p[i]) * math.sqrt(x) * max(1 + 0.038 * math.log(x), 0.1)


@njit(cache=True, nogil=True, error_model="numpy")
def kinked_rows(h: np.ndarray, starts: np.ndarray, n_before: np.ndarray, slot: np.ndarray, jk: np.ndarray,
                theta: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """The helix of every row (rows ``starts[t]:starts[t + 1]`` of track t): the track's ``h`` (T, 5) changed by
    the kinks before the hit, ``out[i] = h[t] + sum_{j < n_before[i]} jk[t, slot[i], j] @ theta[t, slot[i], j]``
    (``jk`` (T, arms, N, 5, 2), ``theta`` (T, arms, N, 2); summed from the IP outwards)."""
    narm, nsc = jk.shape[1], jk.shape[2]
    cum = np.empty((narm, nsc + 1, 5))
    for t in range(starts.size - 1):
        for ia in range(narm):
            for k in range(5):
                cum[ia, 0, k] = 0.0
            for j in range(nsc):
                for k in range(5):
                    cum[ia, j + 1, k] = cum[ia, j, k] + (jk[t, ia, j, k, 0] * theta[t, ia, j, 0]
                                                         + jk[t, ia, j, k, 1] * theta[t, ia, j, 1])
        for i in range(starts[t], starts[t + 1]):
            g = min(n_before[i], nsc)
            for k in range(5):
                out[i, k] = h[t, k] + cum[slot[i], g, k]


@njit(cache=True, nogil=True, error_model="numpy")
def seeds(starts: np.ndarray, pos: np.ndarray, w_circle: np.ndarray, is_u: np.ndarray, stereo: np.ndarray,
          radius: np.ndarray, phi_w0: np.ndarray, par: np.ndarray, m: np.ndarray, h: np.ndarray,
          s_out: np.ndarray) -> None:  # pragma: no cover - compiled
    """:func:`b2luca.reco.fit.seed_tracks` per track (rows ``starts[t]:starts[t + 1]``), the same steps: the
    algebraic circle fit (weights ``w_circle`` (R,)) to the points ``pos`` (R, 3), the sense of motion (most hits
    ahead; cosmics downwards), the arc lengths, then z versus s from the VXD u clusters (``is_u``) and the
    stereo CDC hits (``stereo`` (R,) slope, 0 elsewhere; layer ``radius``, the wire's azimuth at z = 0
    ``phi_w0`` and the layer offsets ``par`` (R, 3), the drift distance ``m``).  Writes the seed helices into
    ``h`` (T, 5) and the rows' arc lengths into ``s_out`` (R,) (their signs are the arms)."""
    ata = np.empty((3, 3))
    atb = np.empty(3)
    for t in range(starts.size - 1):
        r0, r1 = starts[t], starts[t + 1]
        ata[:, :] = 0.0
        atb[:] = 0.0
        for i in range(r0, r1):
            x, y = pos[i, 0], pos[i, 1]
            row = (x, y, 1.0)
            rhs = -(x * x + y * y)
            for p in range(3):
                atb[p] += w_circle[i] * rhs * row[p]
                for q in range(3):
                    ata[p, q] += w_circle[i] * row[p] * row[q]
        tr = ata[0, 0] + ata[1, 1] + ata[2, 2]
        for p in range(3):
            ata[p, p] += 1e-9 * tr
        for j in range(3):  # Gaussian elimination with partial pivoting (as np.linalg.solve)
            piv = j
            for i in range(j + 1, 3):
                if abs(ata[i, j]) > abs(ata[piv, j]):
                    piv = i
            if piv != j:
                for q in range(3):
                    ata[j, q], ata[piv, q] = ata[piv, q], ata[j, q]
                atb[j], atb[piv] = atb[piv], atb[j]
            for i in range(j + 1, 3):
                f = ata[i, j] / ata[j, j]
                for q in range(j + 1, 3):
                    ata[i, q] -= f * ata[j, q]
                atb[i] -= f * atb[j]
        for i in range(2, -1, -1):
            v = atb[i]
            for q in range(i + 1, 3):
                v -= ata[i, q] * atb[q]
            atb[i] = v / ata[i, i]
        cx, cy = -atb[0] / 2, -atb[1] / 2
        rad = math.sqrt(max(cx * cx + cy * cy - atb[2], 1.0))
        d0 = math.hypot(cx, cy) - rad
        phi0 = math.atan2(cx, -cy)
        om = 1.0 / rad
        # sense of motion: the turning angle of every point on the seed circle (clockwise candidate, omega > 0)
        xc, yc = (d0 + rad) * math.sin(phi0), (d0 + rad) * -math.cos(phi0)
        n_back = 0
        for i in range(r0, r1):
            dphi = phi0 - math.atan2(-(pos[i, 0] - xc), pos[i, 1] - yc)
            s_out[i] = math.atan2(math.sin(dphi), math.cos(dphi))  # (-pi, pi]
            n_back += 1 if s_out[i] <= 0 else 0
        flip = n_back > (r1 - r0) - n_back  # most hits must lie ahead
        # wrap to (-pi/2, 3pi/2]: collision tracks reach up to half a turn; cosmics have hits on both sides
        n_neg = n_pos = 0
        for i in range(r0, r1):
            ang = -s_out[i] if flip else s_out[i]
            ang = (ang + math.pi / 2) % (2 * math.pi) - math.pi / 2
            s_out[i] = ang
            n_neg += 1 if ang < 0 else 0
            n_pos += 1 if ang > 0 else 0
        phi_dir = phi0 + math.pi if flip else phi0
        cosmic_flip = n_neg > 0 and n_pos > 0 and math.sin(phi_dir) > 0  # cosmics point downwards
        flip ^= cosmic_flip
        if flip:
            d0, om = -d0, -om
            phi0 = math.atan2(math.sin(phi0 + math.pi), math.cos(phi0 + math.pi))
        # z versus s
        sums = np.zeros(5)
        s0, c0 = math.sin(phi0), math.cos(phi0)
        for i in range(r0, r1):
            s = (-s_out[i] if cosmic_flip else s_out[i]) * rad
            s_out[i] = s
            if is_u[i]:
                z, wz = pos[i, 2], 1 / 0.025 ** 2
            elif stereo[i] != 0.0:
                half = 0.5 * om * s
                k = s if half == 0.0 else s * (math.sin(half) / half)
                ph = phi0 - half
                x = d0 * s0 + k * math.cos(ph)
                y = -d0 * c0 + k * math.sin(ph)
                dphi = math.atan2(y - par[i, 1], x - par[i, 0]) - phi_w0[i]
                dphi = math.atan2(math.sin(dphi), math.cos(dphi))
                z, wz = (radius[i] * dphi - m[i]) / stereo[i], (stereo[i] / 0.3) ** 2
            else:
                continue
            if not math.isfinite(z):
                continue
            sums[0] += wz
            sums[1] += wz * s
            sums[2] += wz * s * s
            sums[3] += wz * z
            sums[4] += wz * s * z
        det = sums[0] * sums[2] - sums[1] ** 2
        okz = det > 1e-9 * max(sums[0] * sums[2], 1e-300)
        h[t, 0], h[t, 1], h[t, 2] = d0, phi0, om
        h[t, 3] = (sums[2] * sums[3] - sums[1] * sums[4]) / det if okz else 0.0
        h[t, 4] = (sums[0] * sums[4] - sums[1] * sums[3]) / det if okz else 0.0


def _load() -> None:
    """Load the kernels now (from numba's on-disk cache; compiled on the first run after an edit), at the
    import of this module: :func:`b2luca.reco.fit.preload` (the driver and the job server, before they fork)
    or the first fit."""
    h = np.zeros((1, 5))
    h[0, 2], h[0, 4] = 1e-4, 0.1
    one = np.ones(1)
    zero = np.zeros(1, np.int64)
    vxd_rows(h, zero, one, 1, np.zeros((1, 3)), np.eye(3).reshape(1, 3, 3).copy(), zero, np.empty(1), np.empty(1),
             np.empty((1, 5)))
    cdc_rows(h, zero, one, 500.0 * one, 0.0 * one, 0.0 * one, 0.0 * one, np.zeros((1, 3)), np.empty(1), np.empty(1),
             np.empty((1, 5)))
    kink_columns(h, np.zeros((1, 5, 2)), zero, zero + 1, zero, np.zeros((1, 7)))
    kink_jacobians(h, np.ones(2), np.array([10.0, 20.0]), np.array([0.01, 0.02]), one, one, 1e-6,
                   np.empty((1, 2, 2, 5, 2)), np.empty((1, 2, 2)))
    seeds(np.array([0, 3]), np.array([[10.0, 0.0, 0.0], [20.0, 1.0, 0.0], [30.0, 3.0, 1.0]]), np.ones(3),
          np.ones(3, np.bool_), np.zeros(3), np.ones(3), np.zeros(3), np.zeros((3, 3)), np.zeros(3), np.empty((1, 5)),
          np.empty(3))
    kinked_rows(h, np.array([0, 1]), zero + 1, zero, np.zeros((1, 1, 1, 5, 2)), np.zeros((1, 1, 1, 2)),
                np.empty((1, 5)))
    d = np.ones((6, 5))
    normal_steps(d, np.zeros(6), np.ones(6), np.array([0, 6]), np.ones(6, np.int64), np.zeros(6, np.int64),
                 np.zeros((1, 1, 1, 5, 2)), np.ones((1, 2)), np.zeros((1, 2)), True, np.zeros(1, np.bool_),
                 np.empty((1, 7)), np.empty((1, 7)), np.empty(1), np.empty((1, 5, 5)))


_load()
