"""The simulation truth expressed in the alignment's global frame (for validations).

The alignment fixes the frame with the constraints of :func:`b2luca.alignment.constraints.
frame_constraints`: the overall (least-squares) translation and rotation of the VXD sensors against the
nominal geometry are zero (:data:`~b2luca.alignment.constraints.FRAME_DOFS`: the translations and the rotation about z;
the tilts are measured against the CDC).  Tracks cannot see (or
barely see) such a motion of the whole tracking system together with the beam spot, so a truth that
contains one (e.g. the mean of the half-shell shifts) is compared after removing it: :func:`truth_in_frame`
finds that motion of the true VXD in the constraints' metric and expresses every true position in the
frame moved with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..reco.geometry import Geometry, nominal_geometry
from .constraints import FRAME_DOFS, rigid_motion_jacobian

__all__ = ["FrameTruth", "frame_motion", "truth_in_frame"]


@dataclass(frozen=True)
class FrameTruth:
    """Truth in the alignment frame.

    ``vxd`` (S, 6) VXDAlignment params, ``cdc`` (L, 3) CDCAlignment params (dx, dy, dphi),
    ``beam_position`` (3,) [mm] or None; ``translation`` (3,) [mm] and ``rotation`` (3,) [rad]: the rigid
    motion (T, w) of the true VXD that was removed (first order: x_frame = x_true - T - w x x_true).
    """

    vxd: np.ndarray
    cdc: np.ndarray
    beam_position: np.ndarray | None
    translation: np.ndarray
    rotation: np.ndarray


def truth_in_frame(vxd_params: np.ndarray, cdc_params: np.ndarray, beam_position: np.ndarray | None = None,
                   geom: Geometry | None = None, dofs: tuple[int, ...] = FRAME_DOFS,
                   sensors: np.ndarray | None = None,
                   motion: tuple[np.ndarray, np.ndarray] | None = None) -> FrameTruth:
    """Express a true alignment (and beam spot) in the alignment's frame.

    Args:
        vxd_params: (S, 6) true VXDAlignment ``params`` in the nominal sensor order (``geom.sensor_id``).
        cdc_params: (L, 3) true CDCAlignment ``params`` (dx, dy [mm], dphi [rad]) per layer.
        beam_position: (3,) true BeamSpot ``position`` [mm], optional.
        geom: the nominal geometry (default :func:`b2luca.reco.geometry.nominal_geometry`).
        sensors: (S,) bool, the sensors whose motion defines the frame (as the alignment's constraints:
            VXDAlignment's ``frame_sensors``; default all).
        dofs: the frame's degrees of freedom (indices of (T_x, T_y, T_z, w_x, w_y, w_z)); the default is
            the alignment's (:data:`~b2luca.alignment.constraints.FRAME_DOFS`: T_x, T_y, T_z, w_z).
        motion: the rigid motion (T [mm], w [rad]) to remove instead of the one of ``vxd_params``: for an
            interval of a time-dependent alignment whose frame is fixed by another interval (the frame
            constraints hold the first interval; a part that moves later is tied to it by the tracks), pass
            that interval's ``translation`` and ``rotation``.

    Returns:
        :class:`FrameTruth` whose ``vxd`` satisfies the frame constraints exactly:
        ``vxd = p - A (T, w)`` with (T, w) the least-squares motion of ``vxd_params`` restricted to ``dofs``
        (the other components are zero); the CDC layers and the beam spot are moved by the same motion
        (first order: (dx, dy) -= (T_x, T_y) + w_z x (dx, dy), dphi -= w_z and, the z shift of a stereo layer
        being its rotation -dz * stereo / r, dphi += T_z * stereo / r; beam: b - T - w x b).
        Compare fitted constants with these, never with the raw truth.
    """
    geom = geom or nominal_geometry()
    p = np.asarray(vxd_params, float)
    if p.shape != (geom.n_sensors, 6):
        raise ValueError(f"truth_in_frame: vxd_params must have shape ({geom.n_sensors}, 6), got {p.shape}")
    cdc = np.asarray(cdc_params, float)
    if cdc.ndim != 2 or cdc.shape[1] != 3:
        raise ValueError(f"truth_in_frame: cdc_params must have shape (layers, 3), got {cdc.shape}")
    a = rigid_motion_jacobian(geom)[:, :, list(dofs)]
    m = np.ones(geom.n_sensors, bool) if sensors is None else np.asarray(sensors, bool)
    ata = np.einsum("sik,sil->kl", a[m], a[m])
    atp = np.einsum("sik,si->k", a[m], p[m])
    x = np.zeros(6)
    x[list(dofs)] = np.linalg.solve(ata, atp)
    if motion is not None:
        x = np.concatenate([np.asarray(motion[0], float), np.asarray(motion[1], float)])
        if x.shape != (6,):
            raise ValueError(f"truth_in_frame: motion must be (T (3,), w (3,)), got shapes "
                             f"{np.shape(motion[0])}, {np.shape(motion[1])}")
    t, w = x[:3], x[3:]
    vxd = p - np.einsum("sik,k->si", rigid_motion_jacobian(geom), x)
    cdc_f = cdc.copy()
    cdc_f[:, 0] -= t[0] - w[2] * cdc[:, 1]
    cdc_f[:, 1] -= t[1] + w[2] * cdc[:, 0]
    cdc_f[:, 2] -= w[2]
    if cdc.shape[0] == geom.n_cdc_layers:  # a z shift of a stereo layer is dphi = -dz * stereo / r (weak_modes)
        cdc_f[:, 2] += t[2] * geom.cdc_stereo / geom.cdc_r
    beam = None
    if beam_position is not None:
        b = np.asarray(beam_position, float)
        beam = b - t - np.cross(w, b)
    return FrameTruth(vxd=vxd, cdc=cdc_f, beam_position=beam, translation=t, rotation=w)


def frame_motion(vxd_params: np.ndarray, cdc_params: np.ndarray, geom: Geometry | None = None,
                 dofs: tuple[int, ...] = (0, 1, 2, 3, 4, 5)) -> np.ndarray:
    """The least-squares rigid motion of the VXD in ``vxd_params`` over ``dofs`` (default: all six, as in the
    reports; :func:`truth_in_frame` removes the part over :data:`FRAME_DOFS`), as (tx, ty, tz [um], rx, ry,
    rz [urad])."""
    f = truth_in_frame(vxd_params, cdc_params, geom=geom, dofs=dofs)
    return np.concatenate([1e3 * f.translation, 1e6 * f.rotation])
