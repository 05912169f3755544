"""Compiled kernels of the track fit: the predictions of the measurement rows and their analytic derivatives
(helix parameters: :func:`vxd_rows`, :func:`cdc_rows`; scattering kinks: :func:`kink_columns`).

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

__all__ = ["cdc_rows", "kink_columns", "vxd_rows"]


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


def _load() -> None:
    """Load the three kernels now (from numba's on-disk cache; compiled on the first run after an edit), at the
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


_load()
