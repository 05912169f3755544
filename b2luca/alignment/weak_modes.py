"""Weak-mode shapes of the VXD + CDC alignment, written once, and their projection.

The *alignment parameter space* is the one of the ``VXDAlignment`` / ``CDCAlignment`` payloads and of the
global labels of ``calibrations/vxdcdc_alignment.py``: per VXD sensor (du, dv, dw [mm], alpha, beta, gamma
[rad]) in its nominal local frame, label ``sensor_id * 10 + 1..6``; per CDC layer (dx, dy [mm], dphi [rad]),
label ``1_000_000 + layer * 10 + 1..3``.  :class:`ParameterLayout` packs the two payload arrays into one
vector (VXD sensors first, then CDC layers) in that label order.

A *mode* is a vector in that space: the parameter change caused by a global distortion of unit amplitude
(1 um or 1 urad, the unit is the last part of the name).  VXD modes are displacement fields
``delta(x)`` of the sensor centres (plus, for rotation-like fields, the local rotation ``omega`` the
sensors follow) taken to first order: ``(du, dv, dw) = rot^T delta(c)``, ``(alpha, beta, gamma) =
rot^T omega`` (see :func:`b2luca.reco.geometry.aligned_frames`).  With ``r, phi, z`` the cylindrical
coordinates of a nominal sensor centre, ``R = R_VXD`` (135 mm, the outer SVD layer) and ``Z = Z_VXD``
(100 mm):

================================  ======================================================================
``vxd_t{x,y,z}_um``               translation of the whole VXD
``vxd_r{x,y,z}_urad``             rotation of the whole VXD about the origin
``vxd_radial_expansion_um``       dr = A r / R  (A = radial shift of the outer layer)
``vxd_telescope_um``              dz = A r / R
``vxd_curl_urad``                 dphi = A r / R (sensors rotate with it)
``vxd_twist_urad``                dphi = A z / Z (sensors rotate with it)
``vxd_clamshell_urad``            dphi = A cos(phi) (the two x-halves open like a clam)
``vxd_bowing_um``                 dr = A (z / Z)^2
``vxd_elliptical_um``             dr = A cos(2 phi) r / R
================================  ======================================================================

CDC layers are rigid in the transverse plane (dx, dy, dphi; no radial or z parameter), so only the modes
that live in that space exist; with ``R = R_CDC`` (1111 mm, the outer layer):

================================  ======================================================================
``cdc_t{x,y}_um``, ``cdc_rz_urad``  translation / rotation of the whole CDC
``cdc_tz_um``                     z translation of the whole CDC: in the rigid-layer model a z shift of a
                                  stereo layer is the rotation dphi = -dz * stereo / r (axial layers: none)
``cdc_twist_urad``                dphi = A r / R (relative rotation of the layers growing with radius;
                                  in the rigid-layer model the CDC twist and curl are the same shape)
``cdc_sagitta_{x,y}_um``          dx (dy) = A r / R (layer shifts growing linearly with radius)
================================  ======================================================================

:func:`project` fits the amplitudes of a set of modes to a parameter difference (e.g. fitted - true) by
weighted least squares and gives their statistical errors from the parameter errors or covariance.
:func:`distortion` turns amplitudes into payload-shaped parameter changes (used by the simulation to inject
a weak mode on request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from ..reco.geometry import Geometry, nominal_geometry

__all__ = ["CDC_LABEL_BASE", "GLOBAL_MODES", "MODE_NAMES", "Projection", "ParameterLayout", "R_CDC", "R_VXD",
           "VXD_LABEL_FACTOR", "WEAK_MODES", "Z_VXD", "distortion", "mode_matrix", "parameter_layout", "project"]

VXD_LABEL_FACTOR = 10
CDC_LABEL_BASE = 1_000_000
R_VXD = 135.0  # mm, reference radius of the VXD modes (outer SVD layer)
Z_VXD = 100.0  # mm, reference z of the VXD twist and bowing
R_CDC = 1111.0  # mm, reference radius of the CDC modes (outer layer)
UM, URAD = 1e-3, 1e-6  # amplitude units in payload units (mm, rad)

#: the overall translations/rotations (what defines the frame; tracks alone cannot fix them)
GLOBAL_MODES = ("vxd_tx_um", "vxd_ty_um", "vxd_tz_um", "vxd_rx_urad", "vxd_ry_urad", "vxd_rz_urad",
                "cdc_tx_um", "cdc_ty_um", "cdc_tz_um", "cdc_rz_urad")
#: the distortions that leave the track chi2 (nearly) unchanged for some track samples
WEAK_MODES = ("vxd_radial_expansion_um", "vxd_telescope_um", "vxd_curl_urad", "vxd_twist_urad",
              "vxd_clamshell_urad", "vxd_bowing_um", "vxd_elliptical_um",
              "cdc_twist_urad", "cdc_sagitta_x_um", "cdc_sagitta_y_um")
MODE_NAMES = GLOBAL_MODES + WEAK_MODES


@dataclass(frozen=True)
class ParameterLayout:
    """The packed alignment parameter vector: VXD (S, 6) row-major, then CDC (L, 3) row-major."""

    n_sensors: int
    n_cdc_layers: int
    labels: np.ndarray  # (P,) int64 global labels in packed order

    @property
    def size(self) -> int:
        """Number of parameters."""
        return 6 * self.n_sensors + 3 * self.n_cdc_layers

    def pack(self, vxd: np.ndarray, cdc: np.ndarray) -> np.ndarray:
        """(S, 6) VXD and (L, 3) CDC arrays -> (P,) vector."""
        vxd, cdc = np.asarray(vxd, float), np.asarray(cdc, float)
        if vxd.shape != (self.n_sensors, 6) or cdc.shape != (self.n_cdc_layers, 3):
            raise ValueError(f"alignment parameters must have shapes ({self.n_sensors}, 6) and "
                             f"({self.n_cdc_layers}, 3), got {vxd.shape} and {cdc.shape}")
        return np.concatenate([vxd.ravel(), cdc.ravel()])

    def unpack(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P,) vector -> ((S, 6) VXD, (L, 3) CDC) arrays (copies)."""
        vec = np.asarray(vec, float)
        if vec.shape != (self.size,):
            raise ValueError(f"alignment parameter vector must have shape ({self.size},), got {vec.shape}")
        k = 6 * self.n_sensors
        return vec[:k].reshape(self.n_sensors, 6).copy(), vec[k:].reshape(self.n_cdc_layers, 3).copy()

    def is_vxd(self) -> np.ndarray:
        """(P,) bool: the VXD entries."""
        return np.arange(self.size) < 6 * self.n_sensors


def parameter_layout(geom: Geometry | None = None) -> ParameterLayout:
    """The layout for ``geom`` (nominal by default); labels as in ``calibrations/vxdcdc_alignment.py``."""
    geom = geom or nominal_geometry()
    vxd = geom.sensor_id.astype(np.int64)[:, None] * VXD_LABEL_FACTOR + np.arange(1, 7)
    cdc = CDC_LABEL_BASE + np.arange(geom.n_cdc_layers)[:, None] * 10 + np.arange(1, 4)
    return ParameterLayout(geom.n_sensors, geom.n_cdc_layers, np.concatenate([vxd.ravel(), cdc.ravel()]))


def _vxd_field(geom: Geometry, delta: np.ndarray, omega: np.ndarray | None = None) -> np.ndarray:
    """Per-sensor params (S, 6) of a global displacement field delta (S, 3) and local rotation omega (S, 3)."""
    out = np.zeros((geom.n_sensors, 6))
    out[:, :3] = np.einsum("sji,sj->si", geom.rot, delta)
    if omega is not None:
        out[:, 3:] = np.einsum("sji,sj->si", geom.rot, omega)
    return out


def _phi_rotation(geom: Geometry, dphi: np.ndarray) -> np.ndarray:
    """VXD params of a rotation about z by dphi (S,) per sensor (centre and orientation follow)."""
    c = geom.center
    delta = np.stack([-c[:, 1] * dphi, c[:, 0] * dphi, np.zeros_like(dphi)], axis=1)
    omega = np.zeros((geom.n_sensors, 3))
    omega[:, 2] = dphi
    return _vxd_field(geom, delta, omega)


def _vxd_shape(geom: Geometry, name: str) -> np.ndarray:
    c = geom.center
    x, y, z = c[:, 0], c[:, 1], c[:, 2]
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    zero = np.zeros_like(x)
    if name in ("vxd_tx_um", "vxd_ty_um", "vxd_tz_um"):
        delta = np.zeros_like(c)
        delta[:, "xyz".index(name[5])] = UM
        return _vxd_field(geom, delta)
    if name in ("vxd_rx_urad", "vxd_ry_urad", "vxd_rz_urad"):
        w = np.zeros(3)
        w["xyz".index(name[5])] = URAD
        return _vxd_field(geom, np.cross(w, c), np.broadcast_to(w, c.shape))

    def radial(dr: np.ndarray) -> np.ndarray:
        return _vxd_field(geom, np.stack([dr * np.cos(phi), dr * np.sin(phi), zero], axis=1))

    shapes = {
        "vxd_radial_expansion_um": lambda: radial(UM * r / R_VXD),
        "vxd_telescope_um": lambda: _vxd_field(geom, np.stack([zero, zero, UM * r / R_VXD], axis=1)),
        "vxd_curl_urad": lambda: _phi_rotation(geom, URAD * r / R_VXD),
        "vxd_twist_urad": lambda: _phi_rotation(geom, URAD * z / Z_VXD),
        "vxd_clamshell_urad": lambda: _phi_rotation(geom, URAD * np.cos(phi)),
        "vxd_bowing_um": lambda: radial(UM * (z / Z_VXD) ** 2),
        "vxd_elliptical_um": lambda: radial(UM * np.cos(2 * phi) * r / R_VXD),
    }
    return shapes[name]()


def _cdc_shape(geom: Geometry, name: str) -> np.ndarray:
    out = np.zeros((geom.n_cdc_layers, 3))
    rel = geom.cdc_r / R_CDC
    table: dict[str, tuple[int, float | np.ndarray]] = {
        "cdc_tx_um": (0, UM), "cdc_ty_um": (1, UM), "cdc_tz_um": (2, -UM * geom.cdc_stereo / geom.cdc_r),
        "cdc_rz_urad": (2, URAD), "cdc_twist_urad": (2, URAD * rel),
        "cdc_sagitta_x_um": (0, UM * rel), "cdc_sagitta_y_um": (1, UM * rel)}
    col, scale = table[name]
    out[:, col] = scale
    return out


_CACHE: dict[int, tuple[Geometry, dict[str, np.ndarray]]] = {}


def _all_modes(geom: Geometry) -> dict[str, np.ndarray]:
    """All mode vectors of ``geom`` (cached per geometry object; Geometry holds arrays, so not hashable)."""
    hit = _CACHE.get(id(geom))
    if hit is not None and hit[0] is geom:
        return hit[1]
    lay = parameter_layout(geom)
    zero_v, zero_c = np.zeros((geom.n_sensors, 6)), np.zeros((geom.n_cdc_layers, 3))
    modes = {}
    for name in MODE_NAMES:
        vec = lay.pack(_vxd_shape(geom, name), zero_c) if name.startswith("vxd_") else \
            lay.pack(zero_v, _cdc_shape(geom, name))
        vec.setflags(write=False)
        modes[name] = vec
    if len(_CACHE) > 4:
        _CACHE.clear()
    _CACHE[id(geom)] = (geom, modes)
    return modes


def _check_names(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in MODE_NAMES]
    if unknown:
        raise ValueError(f"unknown weak mode(s) {unknown}; known: {', '.join(MODE_NAMES)}")
    return names


def mode_matrix(names: Iterable[str] = MODE_NAMES, geom: Geometry | None = None) -> np.ndarray:
    """(P, K) matrix whose columns are the parameter changes of unit amplitude of the modes ``names``."""
    geom = geom or nominal_geometry()
    modes = _all_modes(geom)
    return np.stack([modes[n] for n in _check_names(names)], axis=1)


def distortion(amplitudes: Mapping[str, float], geom: Geometry | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Payload-shaped parameter changes ((S, 6) VXD, (L, 3) CDC) of the modes with the given amplitudes."""
    geom = geom or nominal_geometry()
    names = _check_names(amplitudes)
    lay = parameter_layout(geom)
    if not names:
        return lay.unpack(np.zeros(lay.size))
    vec = mode_matrix(names, geom) @ np.array([float(amplitudes[n]) for n in names])
    return lay.unpack(vec)


@dataclass(frozen=True)
class Projection:
    """Amplitudes of modes fitted to a parameter difference, with their statistical errors."""

    names: tuple[str, ...]
    amplitude: np.ndarray  # (K,) in the mode's unit (um / urad)
    error: np.ndarray  # (K,) statistical error of each amplitude
    cov: np.ndarray  # (K, K)
    residual: np.ndarray  # (P,) difference minus the fitted modes (NaN where the parameter had no error)

    def significance(self) -> np.ndarray:
        """|amplitude| / error per mode."""
        return np.abs(self.amplitude) / self.error

    def as_dict(self) -> dict[str, tuple[float, float]]:
        """{mode: (amplitude, error)}."""
        return {n: (float(a), float(e)) for n, a, e in zip(self.names, self.amplitude, self.error)}


def project(delta: np.ndarray, errors: np.ndarray | None = None, *, cov: np.ndarray | None = None,
            names: Iterable[str] = MODE_NAMES, geom: Geometry | None = None) -> Projection:
    """Fit the amplitudes of the modes ``names`` (jointly) to ``delta`` (P,) in the packed layout.

    Weights: 1 / ``errors`` ** 2 (parameters whose error is not finite and positive, or whose ``delta`` is
    not finite, are left out; ``errors=None``: unit weights).  Amplitude errors: propagated from ``cov``
    (P, P) when given -- the full covariance of the fit, which carries the weak-mode correlations -- else
    from the diagonal ``errors``.  Modes must be fitted jointly: they are not orthogonal to each other.
    Raises ValueError when the modes are degenerate on the parameters used.
    """
    geom = geom or nominal_geometry()
    names = tuple(_check_names(names))
    delta = np.asarray(delta, float)
    m = mode_matrix(names, geom)
    if delta.shape != (m.shape[0],):
        raise ValueError(f"project: delta must have shape ({m.shape[0]},), got {delta.shape}")
    err = np.ones_like(delta) if errors is None else np.asarray(errors, float)
    use = np.isfinite(delta) & np.isfinite(err) & (err > 0)
    w = np.zeros_like(delta)
    w[use] = 1.0 / err[use] ** 2
    a = m[use].T * w[use]  # (K, U)
    normal = a @ m[use]
    if np.linalg.matrix_rank(normal) < len(names):
        raise ValueError(f"project: modes {list(names)} are degenerate on the {int(use.sum())} parameters used")
    ninv = np.linalg.inv(normal)
    b = ninv @ a  # estimator: amplitude = b @ delta[use]
    amp = b @ delta[use]
    if cov is not None:
        c = np.asarray(cov, float)[np.ix_(use, use)]
        acov = b @ c @ b.T
    elif errors is None:
        acov = ninv * np.nan
    else:
        acov = ninv
    residual = np.full_like(delta, np.nan)
    residual[use] = delta[use] - m[use] @ amp
    return Projection(names, amp, np.sqrt(np.diag(acov)), acov, residual)
