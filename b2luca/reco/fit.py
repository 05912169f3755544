"""Vectorised track fit: helix + multiple-scattering kinks, batched Gauss-Newton over all tracks.

Model.  Local parameters of a track = the perigee helix ``(d0, phi0, omega, z0, tanl)`` at the IP
(before the beam pipe) plus, when ``scattering=True``, two kink angles at each of the 8 scatterers
per arm (beam pipe, the 6 VXD layer cylinders, the CDC inner wall; cosmics have two arms, the second
arm's kinks are local parameters 21..36).  A kink changes the helix of everything further out by
``J @ theta`` (J = numerical Jacobian of :func:`b2luca.reco.helix.apply_kink`); each kink also gives
a pseudo-measurement ``0 +- theta0`` (Highland, from the fitted momentum and ``mass``), so this is a
General-Broken-Lines-like fit (kinks linearised about the track) with the same material model as the
simulation.  Alignment derivatives are taken w.r.t. an additional small rigid-body motion of the
element in its current (aligned) frame; for mrad-scale rotations "new params = current params +
correction" holds to first order.

Measurements, predictions and residuals: see :mod:`b2luca.reco.measurements`.  Derivatives are
derivatives of the *prediction* (what Mille records contain; the residual derivative is the
negative): ``local_derivs`` (R, n_local) w.r.t. the local parameters and ``global_derivs`` (R, 6)
w.r.t. the alignment parameters of the hit's element, with ``global_labels`` (R, 6):

* VXD rows: the 6 rigid-body parameters of the sensor, labels ``sensor_id * 10 + k`` (k = 1..6 for
  du, dv, dw, alpha, beta, gamma);
* CDC rows: (dx, dy, dphi) of the wire layer, labels ``1_000_000 + layer * 10 + k`` (k = 1..3);
  columns 3..5 are zero with label 0.

Seeding: an algebraic circle fit to the VXD clusters and axial CDC hits, then a straight-line fit of
z versus arc length to VXD clusters and stereo-layer hits.  Direction convention: collision tracks
point away from the IP; tracks with hits on both sides of the perigee (cosmics) point downwards (-y).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import KernelLoadError
from ..kernel_loading import import_kernels
from . import geometry as G
from . import helix as H
from .measurements import KIND_CDC, Constants, Measurements, cdc_global_derivatives, vxd_global_derivatives

MUON_MASS = 0.1056584
N_SCAT = 8  # beam pipe, 6 VXD layers, CDC inner wall
_STEP = np.array([1e-5, 1e-8, 1e-10, 1e-5, 1e-8])
LABEL_CDC_BASE = 1_000_000
#: from this Gauss-Newton iteration on, once some of a chunk's tracks have converged, the others are fitted on alone
#: (the converged ones no longer ride along through the remaining iterations)
_SPLIT_AT = 2
#: the same for a chunk with warm-started tracks (:class:`TrackStart`): most of them converge at their second
#: evaluation, and the few that do not go on alone from there
_WARM_SPLIT_AT = 1
#: a track fitted from its seed may stop (converged) from this Gauss-Newton iteration on; a warm-started one from its
#: first evaluation (its start is an earlier converged fit: the same criterion, no seed to refine first)
_SEED_MIN_DONE = 2
_TRACK_RESULTS = ("params", "ndf", "cov", "chi2", "kinks", "kink_sigma", "ok")
#: kink angles per track in :class:`TrackStart`: two arms (+1 first), N_SCAT scatterers, two angles
START_KINKS = 2 * N_SCAT * 2


@dataclass(frozen=True)
class TrackStart:
    """Where :func:`fit_tracks` starts each track candidate instead of its seed (a *warm start*): the fitted
    parameters of an earlier fit of the same candidates (e.g. the previous outer iteration of an alignment, with
    geometry corrections of a few um).  ``params`` (T, 5): perigee parameters, a row with a NaN: start from the
    seed; ``kinks`` (T, :data:`START_KINKS`): the fitted kink angles (arm +1 first, then arm -1; zeros where
    unknown).  The fit stops at the same convergence criterion as from a seed (its next step below 1e-3 of its
    errors), but a warm-started track may stop from its first evaluation on."""

    params: np.ndarray
    kinks: np.ndarray

    def __post_init__(self) -> None:
        if self.params.ndim != 2 or self.params.shape[1] != 5 or self.kinks.shape != (self.params.shape[0], START_KINKS):
            raise ValueError(f"TrackStart: expected params (T, 5) and kinks (T, {START_KINKS}), got "
                             f"{self.params.shape} and {self.kinks.shape}")

    @property
    def warm(self) -> np.ndarray:
        """(T,) bool: the candidates that start from ``params`` (the others from their seed)."""
        return np.all(np.isfinite(self.params), axis=1)

    def subset(self, idx: np.ndarray) -> "TrackStart":
        """The start of the candidates ``idx``."""
        return TrackStart(params=self.params[idx], kinks=self.kinks[idx])


@dataclass
class FitResult:
    """Per-track results (index = track of the Measurements) and per-row quantities (rows of ``meas``)."""

    meas: Measurements
    params: np.ndarray  # (T, 5) perigee (d0, phi0, omega, z0, tanl) before the beam pipe (at the IP)
    cov: np.ndarray  # (T, 5, 5)
    chi2: np.ndarray  # (T,) including the kink pseudo-measurements
    ndf: np.ndarray  # (T,) n_rows (with a finite prediction) - 5
    ok: np.ndarray  # (T,) bool: finite parameters and chi2, ndf > 0
    kinks: np.ndarray  # (T, n_kinks) fitted kink angles
    kink_sigma: np.ndarray  # (T, n_kinks) prior widths (pseudo-measurement errors)
    arm: np.ndarray  # (R,) +1 / -1
    pred: np.ndarray  # (R,)
    residual: np.ndarray  # (R,) m - pred (NaN where the track does not reach the element)
    local_derivs: np.ndarray  # (R, 5 + n_kinks) d(pred)/d(local)
    global_derivs: np.ndarray  # (R, 6) d(pred)/d(global); (0, 6) when fitted without global derivatives
    global_labels: np.ndarray  # (R, 6) int64, 0 = unused; (0, 6) when fitted without global derivatives

    @property
    def kink_active(self) -> np.ndarray:
        """(T, n_kinks) bool: the kink influences at least one measurement of the track."""
        nk = self.kinks.shape[1]
        if nk == 0:
            return np.zeros((self.params.shape[0], 0), bool)
        hit = np.abs(self.local_derivs[:, 5:]) > 0
        return np.add.reduceat(hit, np.searchsorted(self.meas.track, np.arange(self.params.shape[0])), axis=0) > 0

    def pseudo_measurements(self) -> dict[str, np.ndarray]:
        """The kink priors as extra measurement rows for Mille records: for every active kink,
        ``track``, local ``column`` (5 + kink index), ``residual`` = 0 - fitted kink, ``sigma``;
        the local derivative of such a row is 1 on ``column`` and there are no global derivatives."""
        t, k = np.nonzero(self.kink_active)
        return {"track": t, "column": 5 + k, "residual": -self.kinks[t, k], "sigma": self.kink_sigma[t, k]}

    @property
    def n_local(self) -> int:
        return int(self.local_derivs.shape[1])

    @property
    def pulls(self) -> np.ndarray:
        """Residual / measurement error per row."""
        return self.residual / self.meas.sigma


def _starts(track: np.ndarray, n_tracks: int) -> np.ndarray:
    return np.searchsorted(track, np.arange(n_tracks))


def _segsum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(x, starts, axis=0)


def seed_tracks(meas: Measurements, geom: G.Geometry, constants: Constants) -> tuple[np.ndarray, np.ndarray]:
    """Seed perigee parameters (T, 5) and the arm (+-1) of every row: an algebraic circle fit to the VXD clusters
    and axial CDC hits, the sense of motion, then z versus arc length (VXD u clusters, stereo CDC hits); one
    compiled pass per track (:func:`b2luca.reco._kernels.seeds`; the numpy version is :func:`_seed_tracks_numpy`)."""
    nt = meas.n_tracks
    cdc = meas.kind == KIND_CDC
    lay = np.maximum(meas.layer, 0)
    stereo = np.where(cdc, geom.cdc_stereo[lay], 0.0)
    axial = np.where(cdc, stereo == 0, meas.kind == 0)
    w = np.where(cdc, 1.0, 10.0) * axial  # VXD clusters are precise and least scattered
    par = np.ascontiguousarray(constants.cdc_params[lay], dtype=float)
    phi_w0 = geom.cdc_phi_offset[lay] + 2 * np.pi * np.maximum(meas.wire, 0) / geom.cdc_nwires[lay] + par[:, 2]
    h = np.empty((nt, 5))
    s = np.empty(meas.track.size)
    _kernels().seeds(np.append(_starts(meas.track, nt), meas.track.size), np.ascontiguousarray(meas.approx_pos,
                     dtype=float), w, meas.kind == 0, stereo, np.asarray(geom.cdc_r[lay], dtype=float), phi_w0, par,
                     np.ascontiguousarray(meas.m, dtype=float), h, s)
    return h, np.where(s > 0, 1.0, -1.0)


def _seed_tracks_numpy(meas: Measurements, geom: G.Geometry, constants: Constants) -> tuple[np.ndarray, np.ndarray]:
    """:func:`seed_tracks` in numpy (the reference of the compiled one)."""
    t, pos = meas.track, meas.approx_pos
    nt = meas.n_tracks
    axial = np.where(meas.kind == KIND_CDC, geom.cdc_stereo[np.maximum(meas.layer, 0)] == 0, meas.kind == 0)
    # --- circle (Kasa): x^2 + y^2 + D x + E y + F = 0, least squares, rows restricted to "axial"
    x, y = pos[:, 0], pos[:, 1]
    w = np.where(meas.kind == KIND_CDC, 1.0, 10.0) * axial  # VXD clusters are precise and least scattered
    a_cols = np.stack([x, y, np.ones_like(x)], 1)
    rhs = -(x * x + y * y)
    st = _starts(t, nt)
    ata = _segsum(w[:, None, None] * a_cols[:, :, None] * a_cols[:, None, :], st)
    atb = _segsum((w * rhs)[:, None] * a_cols, st)
    ata += np.eye(3) * 1e-9 * np.trace(ata, axis1=1, axis2=2)[:, None, None]
    d, e, f = np.linalg.solve(ata, atb[..., None])[..., 0].T
    cx, cy = -d / 2, -e / 2
    rad = np.sqrt(np.maximum(cx * cx + cy * cy - f, 1.0))
    cabs = np.hypot(cx, cy)
    h = np.zeros((nt, 5))
    h[:, 0] = cabs - rad
    h[:, 1] = np.arctan2(cx, -cy)
    h[:, 2] = 1.0 / rad
    # --- sense of motion: arc length of every point on the seed circle (clockwise candidate, omega > 0)
    xcen = (h[:, 0] + rad)[:, None] * np.stack([np.sin(h[:, 1]), -np.cos(h[:, 1])], 1)
    rel = pos[:, :2] - xcen[t]
    phi_pt = np.arctan2(-rel[:, 0], rel[:, 1])  # direction azimuth at the point: n_r(phi) = -(X - C)/R
    dphi = h[t, 1] - phi_pt
    ang = np.arctan2(np.sin(dphi), np.cos(dphi))  # turning angle from the perigee, (-pi, pi]
    flip = np.bincount(t, ang <= 0, nt) > np.bincount(t, ang > 0, nt)  # most hits must lie ahead
    ang = np.where(flip[t], -ang, ang)
    # wrap to (-pi/2, 3pi/2]: collision tracks reach up to half a turn (slightly more with a rough
    # seed); cosmics are nearly straight with hits on both sides of the perigee
    ang = np.mod(ang + np.pi / 2, 2 * np.pi) - np.pi / 2
    both = (np.bincount(t, ang < 0, nt) > 0) & (np.bincount(t, ang > 0, nt) > 0)
    phi_dir = np.where(flip, h[:, 1] + np.pi, h[:, 1])
    cosmic_flip = both & (np.sin(phi_dir) > 0)  # cosmics point downwards
    ang = np.where(cosmic_flip[t], -ang, ang)
    flip ^= cosmic_flip
    h[flip] = h[flip] * np.array([-1, 1, -1, 1, -1])
    h[flip, 1] = np.arctan2(np.sin(h[flip, 1] + np.pi), np.cos(h[flip, 1] + np.pi))
    s = ang * rad[t]
    arm = np.where(s > 0, 1.0, -1.0)
    # --- z versus s
    lay = np.maximum(meas.layer, 0)
    stereo = (meas.kind == KIND_CDC) & (geom.cdc_stereo[lay] != 0)
    xc = H.position(h[t], s)
    par = constants.cdc_params[lay]
    phi_w0 = geom.cdc_phi_offset[lay] + 2 * np.pi * np.maximum(meas.wire, 0) / geom.cdc_nwires[lay] + par[:, 2]
    dphi = np.arctan2(xc[:, 1] - par[:, 1], xc[:, 0] - par[:, 0]) - phi_w0
    dphi = np.arctan2(np.sin(dphi), np.cos(dphi))
    k = np.where(stereo, geom.cdc_stereo[lay], 1.0)
    z_st = (geom.cdc_r[lay] * dphi - meas.m) / k
    z = np.where(meas.kind == 0, pos[:, 2], z_st)
    wz = np.where(meas.kind == 0, 1 / 0.025 ** 2, np.where(stereo, (k / 0.3) ** 2, 0.0))
    wz = np.where(np.isfinite(z), wz, 0.0)
    z = np.where(np.isfinite(z), z, 0.0)
    sums = _segsum(np.stack([wz, wz * s, wz * s * s, wz * z, wz * s * z], 1), st)
    det = sums[:, 0] * sums[:, 2] - sums[:, 1] ** 2
    okz = det > 1e-9 * np.maximum(sums[:, 0] * sums[:, 2], 1e-300)
    det = np.where(okz, det, 1.0)
    h[:, 3] = np.where(okz, (sums[:, 2] * sums[:, 3] - sums[:, 1] * sums[:, 4]) / det, 0.0)
    h[:, 4] = np.where(okz, (sums[:, 0] * sums[:, 4] - sums[:, 1] * sums[:, 3]) / det, 0.0)
    return h, arm


_K: ModuleType | None = None  # b2luca.reco._kernels, once loaded


def _kernels() -> ModuleType:
    """The compiled row kernels (:mod:`b2luca.reco._kernels`), imported and loaded on the first fit (numba is
    not imported by whoever only imports this module); :class:`~b2luca.errors.KernelLoadError` when they
    cannot be loaded."""
    global _K
    if _K is None:
        _K = import_kernels("b2luca.reco._kernels", "track fit")
    return _K


def preload() -> None:
    """Load the track fit's compiled kernels now (numba's on-disk cache; compiled on the first run after an
    edit), so that the processes forked afterwards (luigi's workers, the job server's jobs) get them loaded
    instead of each paying ~0.3 s for it.  A failure is left for the fit to report."""
    try:
        _kernels()
    except KernelLoadError:
        pass


class _Predictor:
    """Predictions of the measurement rows for per-row helices."""

    def __init__(self, meas: Measurements, rows: slice, geom: G.Geometry, constants: Constants, arm: np.ndarray):
        self.geom, self.constants = geom, constants
        self.kind = meas.kind[rows]
        self.vxd = np.flatnonzero(self.kind != KIND_CDC)
        self.cdc = np.flatnonzero(self.kind == KIND_CDC)
        centers, rots = G.aligned_frames(geom, constants.vxd_params)
        sens = meas.sensor[rows][self.vxd]
        self.c, self.r = np.ascontiguousarray(centers[sens]), np.ascontiguousarray(rots[sens])
        self.axis = self.kind[self.vxd].astype(np.int64)
        self.normal = self.r[:, :, 2]  # the sensor normals
        self.u_axis = self.r[np.arange(self.axis.size), :, self.axis]  # (Rv, 3): the measured local axis in global
        self.layer = meas.layer[rows][self.cdc]
        self.wire = meas.wire[rows][self.cdc]
        # per CDC row, gathered once: the layer's alignment (dx, dy, dphi), radius, stereo slope, wire azimuth
        lay = self.layer
        self.cdc_par = np.ascontiguousarray(constants.cdc_params[lay], dtype=float)
        self.cdc_radius = geom.cdc_r[lay]
        self.cdc_stereo = geom.cdc_stereo[lay]
        self.cdc_phi_offset = geom.cdc_phi_offset[lay]
        self.cdc_wire_phi = 2 * np.pi * self.wire / geom.cdc_nwires[lay]
        self.arm = np.ascontiguousarray(arm, dtype=float)
        self.rho_vxd = np.hypot(meas.approx_pos[rows][self.vxd, 0], meas.approx_pos[rows][self.vxd, 1])
        self.s_vxd: np.ndarray | None = None
        # the helices of the last update and their derivatives d(pred)/d(h)
        self._frame: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, h: np.ndarray, n_iter: int = 2, update: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Predictions (R,) and crossing arc lengths (R,) for the per-row helices ``h`` (R, 5).  The VXD
        crossings start from those of the last update (``n_iter`` Newton steps; 6 from the layer cylinder the
        first time).  ``update``: the fit's evaluation (compiled kernels, :mod:`b2luca.reco._kernels`): the
        crossings become the next start, and the derivatives, the local track state and the CDC crossing
        points are kept for :meth:`jacobian` and the global derivatives."""
        pred = np.empty(h.shape[0])
        s_all = np.empty(h.shape[0])
        s0 = self.s_vxd
        if s0 is None:
            s0 = H.cylinder_crossing(h[self.vxd], self.rho_vxd, self.arm[self.vxd])
            s0 = np.where(np.isfinite(s0), s0, self.arm[self.vxd] * self.rho_vxd)
            n_iter = 6
        if update:
            jac = np.empty((h.shape[0], 5))
            hc = np.ascontiguousarray(h, dtype=float)
            K = _kernels()
            lv = K.vxd_rows(hc, self.vxd, s0, n_iter, self.c, self.r, self.axis, pred, s_all, jac)
            self.cdc_x = K.cdc_rows(hc, self.cdc, self.arm, self.cdc_radius, self.cdc_stereo, self.cdc_phi_offset,
                                    self.cdc_wire_phi, self.cdc_par, pred, s_all, jac)
            self.s_vxd = s_all[self.vxd]
            self.vxd_local = (lv[:, 0], lv[:, 1], lv[:, 2], lv[:, 3])
            self._frame = (h, jac)
            return pred, s_all
        hv = h[self.vxd]
        s = H.plane_crossing(hv, s0, self.c, self.normal, n_iter=n_iter)
        x = H.position(hv, s)
        loc = np.einsum("nji,nj->ni", self.r, x - self.c)
        pred[self.vxd] = loc[np.arange(loc.shape[0]), self.axis]
        s_all[self.vxd] = s
        hc = h[self.cdc]
        sc = H.cylinder_crossing(hc, self.cdc_radius, self.arm[self.cdc])
        pred[self.cdc], _ = G.cdc_drift_distance(H.position(hc, sc), self.layer, self.geom, self.constants.cdc_params,
                                                 self.wire)
        s_all[self.cdc] = sc
        return pred, s_all

    def jacobian(self, h: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Analytic d(pred)/d(h), (R, 5), at the crossing arc lengths ``s`` returned by ``self(h)``.

        pred = g . x(h, s(h)) + const locally, with g = d(pred)/dx at the crossing point; the point moves
        with h at fixed s and through s: dx/dh = dx/dh|_s + t ds/dh (t = d(position)/ds), where
        ds/dh = -(n . dx/dh|_s) / (n . t) keeps it on the sensor plane (normal n) or on the layer
        cylinder (n = (x, y, 0)).  So d(pred)/dh = w . dx/dh|_s with w = g - (g.t / n.t) n.
        VXD: g = the sensor's measured axis (pred = u_axis . (x - c)); CDC: pred = dy cos(phi_w) -
        dx sin(phi_w), with the wire azimuth phi_w depending on z in stereo layers.  When ``h`` is the array of
        the last ``self(h, update=True)``, its compiled derivatives (the same formulas) are returned."""
        if self._frame is not None and self._frame[0] is h:
            return self._frame[1]
        hv, sv, hc, sc = h[self.vxd], s[self.vxd], h[self.cdc], s[self.cdc]
        tv, x, tc = H.direction(hv, sv), H.position(hc, sc), H.direction(hc, sc)
        out = np.empty((h.shape[0], 5))
        n, g = self.normal, self.u_axis
        w = g - (np.sum(g * tv, axis=1) / np.sum(n * tv, axis=1))[:, None] * n
        out[self.vxd] = H.projected_position_jacobian(hv, sv, w)
        par = self.cdc_par
        stereo = self.cdc_stereo / self.cdc_radius
        phi_w = self.cdc_phi_offset + x[:, 2] * stereo + self.cdc_wire_phi + par[:, 2]
        cw, sw = np.cos(phi_w), np.sin(phi_w)
        dx, dy = x[:, 0] - par[:, 0], x[:, 1] - par[:, 1]
        g = np.empty((x.shape[0], 3))  # d(pred)/d(x), projected along the cylinder
        g[:, 0], g[:, 1], g[:, 2] = -sw, cw, -(dx * cw + dy * sw) * stereo
        ratio = (g[:, 0] * tc[:, 0] + g[:, 1] * tc[:, 1] + g[:, 2] * tc[:, 2]) / (x[:, 0] * tc[:, 0] + x[:, 1] * tc[:, 1])
        g[:, 0] -= ratio * x[:, 0]
        g[:, 1] -= ratio * x[:, 1]
        out[self.cdc] = H.projected_position_jacobian(hc, sc, g)
        return out

    def derivatives(self, h: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Forward-difference d(pred)/d(h), (R, 5), from the predictions ``base`` at h (the steps are
        tiny compared with the curvature scales, the truncation error is < 1e-6 relative)."""
        out = np.empty((h.shape[0], 5))
        for i in range(5):
            dh = np.zeros(5)
            dh[i] = _STEP[i]
            out[:, i] = (self(h + dh)[0] - base) / _STEP[i]
        return out


def _scatterers(geom: G.Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Radii and thicknesses (x/X0) of the N_SCAT scatterers of an arm, from the IP outwards."""
    radii = np.array([G.BEAMPIPE_R] + [G.scatterer_radius(geom, li) for li in range(6)] + [G.CDC_INNER_WALL_R])
    x0s = np.array([G.BEAMPIPE_X0] + list(geom.layer_x0) + [G.CDC_INNER_WALL_X0])
    return radii, x0s


_KINK_EPS = 1e-6  # the kink angle steps of the central differences


def _kink_jacobians(h: np.ndarray, arms: tuple[float, ...], geom: G.Geometry, p: np.ndarray,
                    mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """J (T, n_arms, N_SCAT, 5, 2) and prior widths (T, n_arms, N_SCAT): central differences of
    :func:`b2luca.reco.helix.apply_kink` in both kink angles for every track, arm and scatterer, one compiled
    pass (:func:`b2luca.reco._kernels.kink_jacobians`; the numpy version is :func:`_kink_jacobians_numpy`)."""
    radii, x0s = _scatterers(geom)
    nt = h.shape[0]
    jac = np.empty((nt, len(arms), N_SCAT, 5, 2))
    sig = np.empty((nt, len(arms), N_SCAT))
    _kernels().kink_jacobians(np.ascontiguousarray(h, dtype=float), np.asarray(arms, dtype=float), radii, x0s,
                              np.ascontiguousarray(p, dtype=float), np.ascontiguousarray(mass, dtype=float),
                              _KINK_EPS, jac, sig)
    return jac, sig


def _kink_jacobians_numpy(h: np.ndarray, arms: tuple[float, ...], geom: G.Geometry, p: np.ndarray,
                          mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_kink_jacobians` in numpy (the reference of the compiled one): every arm and scatterer at once (the
    helix functions are elementwise, so the stacked evaluation gives the same numbers as one call per arm,
    scatterer and step)."""
    radii, x0s = _scatterers(geom)
    eps = _KINK_EPS
    s = H.cylinder_crossing(h, radii[None, :, None], np.asarray(arms)[:, None, None])  # (arms, N_SCAT, T)
    ok = np.isfinite(s)
    s = np.where(ok, s, 0.0)
    # steps (t1, t2): +eps / -eps in the first angle, then in the second
    t1 = np.array([eps, -eps, 0.0, 0.0])[:, None, None, None]
    t2 = np.array([0.0, 0.0, eps, -eps])[:, None, None, None]
    hk = H.apply_kink(h, s, t1, t2)  # (4, arms, N_SCAT, T, 5)
    hp, hm = hk[0::2], hk[1::2]  # (angle, arms, N_SCAT, T, 5)
    dd = (hp - hm) / (2 * eps)
    dd[..., 1] = np.arctan2(np.sin(hp[..., 1] - hm[..., 1]), np.cos(hp[..., 1] - hm[..., 1])) / (2 * eps)
    jac = np.where(ok[None, :, :, :, None], dd, 0.0).transpose(3, 1, 2, 4, 0)
    sig = np.where(ok, H.scatter_sigma(h, s, x0s[None, :, None], p, mass), 1.0).transpose(2, 0, 1)
    return np.ascontiguousarray(jac), np.ascontiguousarray(sig)


def _helix_covariance(a_s: np.ndarray, scale: np.ndarray, eye: np.ndarray) -> np.ndarray:
    """(nt, 5, 5) covariance of the helix parameters: the first 5 columns of the inverse of the scaled normal
    matrices ``a_s`` (kinks included: they are profiled, not fixed), unscaled (the kinks' columns are not needed)."""
    cols = np.linalg.solve(a_s, np.broadcast_to(eye[:, :5], (a_s.shape[0], eye.shape[0], 5)))
    return cols[:, :5, :] * scale[:, :5, None] * scale[:, None, :5]


def _fit_chunk(meas: Measurements, rows: slice, t0: int, t1: int, h: np.ndarray, arm: np.ndarray,
               geom: G.Geometry, constants: Constants, mass: np.ndarray, n_iter: int, scattering: bool,
               arms: tuple[float, ...], split_at: int | None = None,
               resume: dict[str, Any] | None = None, global_derivatives: bool = True,
               theta0: np.ndarray | None = None, warm: np.ndarray | None = None) -> dict[str, Any]:
    """Gauss-Newton fit of the tracks t0..t1 (rows ``rows`` of ``meas``) from the helices ``h`` (and the kink
    angles ``theta0`` (nt, arms, N_SCAT, 2), zeros by default); ``warm`` (nt,) bool: tracks warm-started from an
    earlier converged fit, which may stop from the first evaluation on (the others from iteration 2 on).

    ``split_at``: from that iteration on, once some (not all) tracks have converged, stop after the update and
    return every track's results of this evaluation, ``done`` (which tracks converged: their results are final)
    and ``state`` (the iteration state for the next evaluation, per track: helices, kinks, step control, the
    VXD crossings to start from); ``resume``: such a state (of the remaining tracks) to
    continue from, computing the same numbers as the chunk would have.  A converged track's result is the
    evaluation it converged at (unsplit, its parameters stay but it is evaluated again: round-off apart, the
    same results)."""
    nt = t1 - t0
    track = meas.track[rows] - t0
    bounds = np.append(_starts(track, nt), track.size)  # the rows of track t: bounds[t]:bounds[t + 1]
    m, w0 = meas.m[rows], 1.0 / meas.sigma[rows] ** 2
    pr = _Predictor(meas, rows, geom, constants, arm)
    K = _kernels()
    nk = len(arms) * N_SCAT * 2 if scattering else 0
    nl = 5 + nk
    theta = np.zeros((nt, len(arms), N_SCAT, 2)) if theta0 is None else np.array(theta0, float)
    min_done = np.where(np.zeros(nt, bool) if warm is None else warm, 0, _SEED_MIN_DONE)
    slot = np.where(arm > 0, 0, len(arms) - 1).astype(np.int64)
    # number of scatterers between the perigee and the hit: beam pipe + inner VXD layers (+ CDC wall)
    li = np.where(meas.kind[rows] == KIND_CDC, N_SCAT, geom.layer[np.maximum(meas.sensor[rows], 0)]).astype(np.int64)
    # flat row indices (one index array gathers several times faster than a pair of them)
    track_arm = track * len(arms) + slot  # (track, arm) of every row
    chi2_prev = np.full(nt, np.inf)
    ngood_prev = np.zeros(nt)
    delta_prev = np.zeros((nt, nl))
    done = np.zeros(nt, bool)
    it = 0
    if resume is not None:  # the next evaluation of an earlier call: the same numbers as in that call
        theta, chi2_prev, ngood_prev = resume["theta"], resume["chi2_prev"], resume["ngood_prev"]
        delta_prev, it, pr.s_vxd = resume["delta_prev"], int(resume["it"]), resume["s_vxd"]
        min_done = resume["min_done"]
    stopped = False
    while True:
        p = H.momentum(h)
        if scattering:
            jac, sig = _kink_jacobians(h, arms, geom, p, mass[t0:t1])
            # the helix at each hit: the track's changed by the kinks before it
            h_rows = np.empty((track.size, 5))
            K.kinked_rows(np.ascontiguousarray(h, dtype=float), bounds, li, slot, jac,
                          np.ascontiguousarray(theta, dtype=float), h_rows)
        else:
            h_rows = h[track]
        pred, s = pr(h_rows, update=True)
        d = pr.jacobian(h_rows, s)
        good = np.isfinite(pred) & np.all(np.isfinite(d), axis=1)
        res = np.where(good, m - pred, 0.0)
        d = np.where(good[:, None], d, 0.0)
        w = np.where(good, w0, 0.0)
        # the normal equations of every track straight from its rows and kink priors, scaled to a unit diagonal and
        # solved (Cholesky): the step in units of 1/sqrt(diag) (<= 1 sigma); the helix covariance at the last one
        if scattering:
            ws = np.ascontiguousarray(1.0 / np.repeat(sig.reshape(nt, -1), 2, axis=1) ** 2)
            th = np.ascontiguousarray(theta.reshape(nt, -1), dtype=float)
        else:
            ws = th = np.zeros((nt, 0))
            jac = np.zeros((nt, 0, 0, 5, 2))
        d = np.ascontiguousarray(d, dtype=float)
        step, scale, chi2 = np.empty((nt, nl)), np.empty((nt, nl)), np.empty(nt)
        cov = np.full((nt, 5, 5), np.nan)  # of the tracks that may stop here (all of them at the last iteration)
        K.normal_steps(d, res, w, bounds, li, slot, jac, ws, th, it >= n_iter, done, step, scale, chi2, cov)
        # step control: a step that raised chi2 (or lost measurements) is halved instead of taking a new one
        ngood = np.bincount(track, weights=good, minlength=nt)
        worse = (ngood < ngood_prev) | (chi2 > chi2_prev * (1 + 1e-3) + 1e-3)
        # a converged track (its next step < 1e-3 of its errors) stops here: its result does not depend on the
        # other tracks of the batch (the batch size, the files and runs fitted together)
        done |= (it >= min_done) & ~worse & (np.max(np.abs(step), axis=1) < 1e-3)
        last = it >= n_iter or bool(done.all())
        stopped = not last and split_at is not None and it >= split_at and bool(done.any())
        if last or stopped:  # the local derivatives of the result's evaluation
            loc = np.zeros((res.size, nl))
            loc[:, :5] = d
            if scattering:
                # d(pred)/d(kink) = d(pred)/d(h) . J(kink) for the kinks before the hit, in its arm's columns;
                # J laid out as (T * arms, 5, N_SCAT * 2)
                j2 = np.ascontiguousarray(jac.transpose(0, 1, 3, 2, 4)).reshape(-1, 5, 2 * N_SCAT)
                K.kink_columns(d, j2, track_arm, li, slot, loc)
        if last:
            break
        if stopped:  # the converged tracks' results are this evaluation's; the others go on alone
            h_eval, theta_eval = h, theta
        delta = step * scale
        delta = np.where(worse[:, None], -0.5 * delta_prev, delta)
        delta[done] = 0.0
        delta_prev = np.where(worse[:, None], 0.5 * delta_prev, delta)
        chi2_prev = np.where(worse, chi2_prev, chi2)
        ngood_prev = np.where(worse, ngood_prev, ngood)
        it += 1
        h = h + delta[:, :5]
        h[:, 1] = np.arctan2(np.sin(h[:, 1]), np.cos(h[:, 1]))
        if scattering:
            theta = theta + delta[:, 5:].reshape(theta.shape)
        if stopped:
            break
    state = None
    if stopped:
        state = dict(h=h, theta=theta, chi2_prev=chi2_prev, ngood_prev=ngood_prev, delta_prev=delta_prev, it=it,
                     s_vxd=pr.s_vxd, vxd_rows=pr.vxd, min_done=min_done, split_at=split_at)
        h, theta = h_eval, theta_eval
    ndf = np.bincount(track, weights=good, minlength=nt) - 5
    ok = np.all(np.isfinite(h), axis=1) & np.isfinite(chi2) & (ndf > 0)
    out: dict[str, Any] = dict(
        params=h, ndf=ndf, cov=cov, chi2=chi2, kinks=theta.reshape(nt, -1) if scattering else np.zeros((nt, 0)),
        kink_sigma=(np.repeat(sig.reshape(nt, -1), 2, axis=1) if scattering else np.zeros((nt, 0))),
        pred=pred, residual=np.where(good, res, np.nan), local=loc, ok=ok)
    if global_derivatives:
        nr = res.size
        gd = np.zeros((nr, 6))
        gl = np.zeros((nr, 6), np.int64)
        u, v, tu, tv = pr.vxd_local
        gu, gv = vxd_global_derivatives(u, v, tu, tv)
        isu = (pr.axis == 0)[:, None]
        gd[pr.vxd] = np.where(isu, gu, gv)
        sid = geom.sensor_id[meas.sensor[rows][pr.vxd]].astype(np.int64)
        gl[pr.vxd] = sid[:, None] * 10 + np.arange(1, 7)
        gd[pr.cdc, :3] = cdc_global_derivatives(pr.cdc_x, pr.layer, pr.wire, geom, constants.cdc_params)
        gl[pr.cdc, :3] = LABEL_CDC_BASE + pr.layer[:, None] * 10 + np.arange(1, 4)
        out.update(gd=gd, gl=gl)
    if state is not None:
        out["done"] = done
        out["state"] = state
    return out


def _resume_stragglers(r: dict[str, Any], meas: Measurements, rows: slice, t0: int, arm_rows: np.ndarray,
                       geom: G.Geometry, constants: Constants, mass: np.ndarray, n_iter: int, scattering: bool,
                       arms: tuple[float, ...], global_derivatives: bool = True) -> None:
    """Continue the fit of a split chunk's unconverged tracks from their state (the converged ones keep the
    results of the evaluation they converged at) and put their results into ``r`` in place (splitting again
    as tracks converge); drops ``done`` and ``state``."""
    done, state = r.pop("done"), r.pop("state")
    left = np.flatnonzero(~done)
    track = meas.track[rows] - t0
    keep = ~done[track]
    remap = np.full(done.size, -1, np.int64)
    remap[left] = np.arange(left.size)
    cols = {f.name: getattr(meas, f.name)[rows][keep] for f in dataclasses.fields(meas)
            if f.name not in ("track_key", "track")}
    sub = dataclasses.replace(meas, track_key=meas.track_key[t0 + left], track=remap[track[keep]], **cols)
    vxd_rows, s_vxd = state.pop("vxd_rows"), state.pop("s_vxd")
    resume = {k: (v if k in ("it", "split_at") else v[left]) for k, v in state.items()}
    split_at = resume.pop("split_at")
    resume["s_vxd"] = s_vxd[keep[vxd_rows]]
    h = resume.pop("h")
    rs = _fit_chunk(sub, slice(0, int(keep.sum())), 0, left.size, h, arm_rows[keep], geom, constants,
                    mass[t0 + left], n_iter, scattering, arms, split_at=split_at, resume=resume,
                    global_derivatives=global_derivatives)
    if "done" in rs:
        _resume_stragglers(rs, sub, slice(0, int(keep.sum())), 0, arm_rows[keep], geom, constants, mass[t0 + left],
                           n_iter, scattering, arms, global_derivatives)
    for k, v in rs.items():  # per-track results by track, the others by row
        r[k][left if k in _TRACK_RESULTS else keep] = v


def fit_tracks(meas: Measurements, constants: Constants, geom: G.Geometry | None = None,
               mass: float | np.ndarray = MUON_MASS, n_iter: int = 6, scattering: bool = True,
               chunk_tracks: int = 2000, prefit: bool = False, global_derivatives: bool = True,
               start: TrackStart | None = None) -> FitResult:
    """Fit all track candidates of ``meas`` (batched Gauss-Newton from the seed, at most ``n_iter``
    iterations; a track stops once its next step is below 1e-3 of its errors, so its result does not depend
    on the other tracks of the batch, and a chunk stops when all have; once some tracks of a chunk have
    converged, the others go on alone from their state (the results change by round-off only); a step that
    raises a track's chi2 is halved).  ``prefit``: first 2 helix-only iterations (rarely needed).

    ``mass``: particle hypothesis for the scattering widths (scalar or per track).  Tracks are processed
    in chunks of ``chunk_tracks`` to bound memory; there is no Python loop per track or hit.
    ``global_derivatives=False``: the alignment derivatives are not computed (``global_derivs`` and
    ``global_labels`` of the result are then empty, shape (0, 6)).
    ``start``: a :class:`TrackStart` per candidate (warm start from an earlier fit; its NaN rows from the seed).
    """
    geom = geom or G.nominal_geometry()
    nt = meas.n_tracks
    if nt == 0:
        nl = 5 + (2 * N_SCAT if scattering else 0)
        z = np.zeros(0)
        return FitResult(meas=meas, params=np.zeros((0, 5)), cov=np.zeros((0, 5, 5)), chi2=z, ndf=z, ok=z.astype(bool),
                         kinks=np.zeros((0, nl - 5)), kink_sigma=np.zeros((0, nl - 5)), arm=z, pred=z, residual=z,
                         local_derivs=np.zeros((0, nl)), global_derivs=np.zeros((0, 6)),
                         global_labels=np.zeros((0, 6), np.int64))
    mass = np.broadcast_to(np.asarray(mass, float), (nt,))
    h0, arm = seed_tracks(meas, geom, constants)
    arms = (1.0, -1.0) if np.any(arm < 0) else (1.0,)
    warm = np.zeros(nt, bool)
    theta0 = None
    if start is not None:
        if start.params.shape[0] != nt:
            raise ValueError(f"fit_tracks: start has {start.params.shape[0]} tracks, the measurements {nt}")
        warm = start.warm
        h0 = np.where(warm[:, None], start.params, h0)
        theta0 = np.where(warm[:, None, None, None],
                          start.kinks.reshape(nt, 2, N_SCAT, 2)[:, :len(arms)], 0.0) if scattering else None
    starts = np.searchsorted(meas.track, np.arange(0, nt + 1))
    out: dict[str, list] = {}
    for t0 in range(0, nt, chunk_tracks):
        t1 = min(nt, t0 + chunk_tracks)
        rows = slice(starts[t0], starts[t1])
        h_start = h0[t0:t1]
        w = warm[t0:t1]
        if scattering and prefit and not w.all():  # pre-fit without kinks: a robust start for low-momentum tracks
            pre = _fit_chunk(meas, rows, t0, t1, h_start, arm[rows], geom, constants, mass, 2, False, arms)["params"]
            h_start = np.where(w[:, None], h_start, pre)  # (warm-started tracks keep their start)
        r = _fit_chunk(meas, rows, t0, t1, h_start, arm[rows], geom, constants, mass, n_iter, scattering, arms,
                       split_at=_WARM_SPLIT_AT if w.any() else _SPLIT_AT, global_derivatives=global_derivatives,
                       theta0=None if theta0 is None else theta0[t0:t1], warm=w)
        if "done" in r:  # some tracks converged: the others go on alone
            _resume_stragglers(r, meas, rows, t0, arm[rows], geom, constants, mass, n_iter, scattering, arms,
                               global_derivatives)
        for k, v in r.items():
            out.setdefault(k, []).append(v)
    cat = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in out.items()}
    return FitResult(meas=meas, params=cat["params"], cov=cat["cov"], chi2=cat["chi2"], ndf=cat["ndf"], ok=cat["ok"], kinks=cat["kinks"],
                     kink_sigma=cat["kink_sigma"], arm=arm, pred=cat["pred"], residual=cat["residual"],
                     local_derivs=cat["local"], global_derivs=cat.get("gd", np.zeros((0, 6))),
                     global_labels=cat.get("gl", np.zeros((0, 6), np.int64)))


def predict(meas: Measurements, constants: Constants, h_rows: np.ndarray, arm: np.ndarray,
            geom: G.Geometry | None = None) -> np.ndarray:
    """Predicted values of all rows of ``meas`` for per-row helices ``h_rows`` (R, 5) and arms (R,)."""
    geom = geom or G.nominal_geometry()
    pr = _Predictor(meas, slice(0, meas.track.size), geom, constants, arm)
    pred, _ = pr(h_rows)
    return pred
