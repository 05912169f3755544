"""Helix maths in a uniform solenoid field along z (vectorised numpy).

Perigee parameters ``h = (d0, phi0, omega, z0, tanl)`` (last axis), w.r.t. the origin:

* perigee point ``(d0 sin phi0, -d0 cos phi0, z0)``; ``phi0`` = azimuth of the direction there;
* ``omega`` = signed curvature (1/mm), ``omega = charge * C_B / pT``; positive charges in the +z field
  turn clockwise: the direction azimuth along the transverse arc length ``s`` is ``phi0 - omega s``;
* ``z(s) = z0 + s tanl``.

This is the Belle II convention (basf2 ``Helix``).  Formulas are written in a form that stays
numerically stable for ``omega -> 0`` (straight tracks).  ``s`` is the transverse arc length.
"""

from __future__ import annotations

import numpy as np

D0, PHI0, OMEGA, Z0, TANL = range(5)


def _sinc(x: np.ndarray) -> np.ndarray:
    """sin(x)/x with the limit 1 at 0."""
    return np.sinc(x / np.pi)


def position(h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Point on the helix at arc length ``s``; h (..., 5), s (...) -> (..., 3)."""
    d0, phi0, om, z0, tl = (h[..., i] for i in range(5))
    half = 0.5 * om * s
    ph = phi0 - half
    k = s * _sinc(half)
    x = d0 * np.sin(phi0) + k * np.cos(ph)
    y = -d0 * np.cos(phi0) + k * np.sin(ph)
    z = z0 + s * tl
    return np.stack([x, y, z], axis=-1)


def _dsinc(x: np.ndarray) -> np.ndarray:
    """d(sin(x)/x)/dx, with the series -x/3 + x^3/30 near 0 (no cancellation)."""
    small = np.abs(x) < 1e-3
    xs = np.where(small, 1.0, x)
    return np.where(small, x * (x * x / 30.0 - 1.0 / 3.0), (xs * np.cos(xs) - np.sin(xs)) / (xs * xs))


def position_jacobian(h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """d(position)/d(h) at fixed arc length ``s``: h (..., 5), s (...) -> (..., 3, 5) (analytic; stable for
    ``omega -> 0``).  With :func:`direction` (d/ds) it gives the derivative of any crossing point."""
    d0, phi0, om = h[..., D0], h[..., PHI0], h[..., OMEGA]
    half = 0.5 * om * s
    ph = phi0 - half
    cph, sph = np.cos(ph), np.sin(ph)
    k = s * _sinc(half)
    dk = 0.5 * s * s * _dsinc(half)  # dk/domega
    zero = np.zeros_like(k)
    jx = [np.sin(phi0) + zero, d0 * np.cos(phi0) - k * sph, dk * cph + 0.5 * s * k * sph, zero, zero]
    jy = [-np.cos(phi0) + zero, d0 * np.sin(phi0) + k * cph, dk * sph - 0.5 * s * k * cph, zero, zero]
    jz = [zero, zero, zero, zero + 1.0, s + zero]
    return np.stack([np.stack(jx, -1), np.stack(jy, -1), np.stack(jz, -1)], axis=-2)


def projected_position_jacobian(h: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``w . d(position)/d(h)`` at fixed ``s`` for vectors w (N, 3): (N, 5), without forming the
    (N, 3, 5) Jacobian of :func:`position_jacobian` (the same formulas)."""
    d0, phi0, om = h[..., D0], h[..., PHI0], h[..., OMEGA]
    half = 0.5 * om * s
    ph = phi0 - half
    cph, sph = np.cos(ph), np.sin(ph)
    c0, s0 = np.cos(phi0), np.sin(phi0)
    k = s * _sinc(half)
    dk = 0.5 * s * s * _dsinc(half)
    wx, wy, wz = w[..., 0], w[..., 1], w[..., 2]
    out = np.empty(h.shape[:-1] + (5,))
    out[..., 0] = wx * s0 - wy * c0
    out[..., 1] = d0 * (wx * c0 + wy * s0) + k * (wy * cph - wx * sph)
    out[..., 2] = dk * (wx * cph + wy * sph) + 0.5 * s * k * (wx * sph - wy * cph)
    out[..., 3] = wz
    out[..., 4] = wz * s
    return out


def direction(h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """d(position)/ds (not normalised: transverse part has unit length, z part = tanl)."""
    phi = h[..., PHI0] - h[..., OMEGA] * s
    return np.stack([np.cos(phi), np.sin(phi), np.broadcast_to(h[..., TANL], phi.shape)], axis=-1)


def from_point(pos: np.ndarray, phi: np.ndarray, tanl: np.ndarray, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Perigee parameters of the helix through ``pos`` (..., 3) with direction azimuth ``phi`` there.

    Returns ``(h, s)``: parameters (..., 5) and the arc length of ``pos`` on that helix.
    Stable for small ``omega`` (uses the exact geometry without 1/omega cancellations).
    """
    px, py, pz = pos[..., 0], pos[..., 1], pos[..., 2]
    cphi, sphi = np.cos(phi), np.sin(phi)
    # signed distance of the origin-side normal: the closest point on the straight line
    # t = -(p . dir) is the straight-line arc length to the perigee; curvature corrections follow.
    # exact: centre C = P + (1/om) (sin phi, -cos phi); perigee on the line origin-C.
    # with u = (p x dir)_z = px sinphi - py cosphi  (= d0 for a straight line)
    #      t = p . dir
    u = px * sphi - py * cphi
    t = px * cphi + py * sphi
    # |C|^2 = (1/om + u)^2 + t^2 ; d0 = sign * |C| - 1/om written stably:
    # d0 = ((1/om+u)^2 + t^2 - 1/om^2) / (sign|C| + 1/om) = (2u/om + u^2 + t^2)/(...)  -> multiply by om:
    # d0 = (2u + om (u^2 + t^2)) / (1 + sqrt((1 + om u)^2 + (om t)^2))   [for 1 + om*d0 > 0]
    a = 1.0 + omega * u
    root = np.sqrt(a * a + (omega * t) ** 2)
    d0 = (2.0 * u + omega * (u * u + t * t)) / (1.0 + root)
    # direction at the perigee: the perigee direction is perpendicular to the radius vector from C.
    # phi0 = phi + omega * s_p where s_p is the arc length from perigee to P: sin/cos of the turning angle
    # (C - perigee) and (C - P) directions; turning angle chi with sin(chi) = om t / root, cos = a/root
    chi = np.arctan2(omega * t, a)
    phi0 = phi + chi
    # s_p = chi / omega, stably:
    s_p = np.where(np.abs(omega) > 1e-12, chi / np.where(omega == 0, 1.0, omega), t)
    # small omega: chi ~ omega t -> s_p ~ t; use series-safe expression
    small = np.abs(chi) < 1e-6
    s_p = np.where(small, t * (1.0 - (omega * t) ** 2 / (3 * a * a)) / a, s_p)
    z0 = pz - s_p * tanl
    h = np.stack([d0, np.arctan2(np.sin(phi0), np.cos(phi0)), np.broadcast_to(omega, d0.shape),
                  z0, np.broadcast_to(tanl, d0.shape)], axis=-1)
    return h, s_p


def cylinder_crossing(h: np.ndarray, r: np.ndarray | float, arm: np.ndarray | float = 1.0) -> np.ndarray:
    """Arc length where the helix crosses the cylinder of radius ``r`` (first crossing on the side
    ``sign(s) = arm`` of the perigee, within half a turn); NaN where it does not reach ``r``."""
    d0, om = h[..., D0], h[..., OMEGA]
    denom = 1.0 + om * d0
    with np.errstate(invalid="ignore", divide="ignore"):
        q = (r * r - d0 * d0) / denom
        root = np.sqrt(q)  # NaN if r < |d0|
        a = 0.5 * np.abs(om) * root
        ok = (q >= 0) & (a <= 1.0) & (denom > 0)
        a = np.where(ok, a, 0.5)
        ratio = np.where(a < 1e-8, 1.0, np.arcsin(a) / np.where(a == 0, 1.0, a))
        s = root * ratio
    return np.where(ok, arm * s, np.nan)


def plane_crossing(h: np.ndarray, s_start: np.ndarray, point: np.ndarray, normal: np.ndarray,
                   n_iter: int = 4) -> np.ndarray:
    """Newton iterations for the arc length where the helix crosses the plane (point, normal).

    h (..., 5), s_start (...), point/normal (..., 3) -> s (...).
    """
    s = np.asarray(s_start, dtype=float)
    for _ in range(n_iter):
        f = np.sum((position(h, s) - point) * normal, axis=-1)
        df = np.sum(direction(h, s) * normal, axis=-1)
        s = s - f / df
    return s


# --- multiple scattering ---------------------------------------------------------------------------
def highland(p: np.ndarray, mass: np.ndarray | float, x_over_x0: np.ndarray) -> np.ndarray:
    """Highland width (rad) of the projected scattering angle for momentum p [GeV] and material x/X0."""
    beta = p / np.sqrt(p * p + np.asarray(mass) ** 2)
    x = np.maximum(x_over_x0, 1e-12)
    return 0.0136 / (beta * p) * np.sqrt(x) * np.maximum(1 + 0.038 * np.log(x), 0.1)


def scatter_sigma(h: np.ndarray, s: np.ndarray, x0: "float | np.ndarray", p: np.ndarray,
                  mass: np.ndarray | float) -> np.ndarray:
    """Kink width at arc length s where the helix crosses a cylindrical layer of thickness x0 (x/X0 at
    normal incidence); the path length grows with 1/|cos(incidence)| (capped at 20)."""
    pos = position(h, s)
    phi = h[..., PHI0] - h[..., OMEGA] * s
    cl = np.cos(np.arctan(h[..., TANL]))
    cos_inc = np.abs(cl * np.cos(phi - np.arctan2(pos[..., 1], pos[..., 0])))
    return highland(p, mass, x0 / np.maximum(cos_inc, 0.05))


def apply_kink(h: np.ndarray, s: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """Helix after a kink at arc length s: the direction is turned by t1 in the transverse plane
    (along e1 = z x t) and by t2 along e2 = t x e1 (towards +z); |p| is kept."""
    pos = position(h, s)
    phi = h[..., PHI0] - h[..., OMEGA] * s
    lam = np.arctan(h[..., TANL])
    cl, sl = np.cos(lam), np.sin(lam)
    cp, sp = np.cos(phi), np.sin(phi)
    tx = cl * cp - t1 * sp - t2 * sl * cp
    ty = cl * sp + t1 * cp - t2 * sl * sp
    tz = sl + t2 * cl
    ptn = np.hypot(tx, ty)
    norm = np.sqrt(ptn ** 2 + tz ** 2)
    omega = h[..., OMEGA] * cl / (ptn / norm)
    hn, _ = from_point(pos, np.arctan2(ty, tx), tz / ptn, omega)
    return hn


def momentum(h: np.ndarray) -> np.ndarray:
    """|p| [GeV] from omega and tanl (1.5 T field)."""
    from .geometry import C_B

    return C_B / np.maximum(np.abs(h[..., OMEGA]), 1e-12) * np.sqrt(1 + h[..., TANL] ** 2)
