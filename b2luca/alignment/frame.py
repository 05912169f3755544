"""The global frame of the VXD + CDC alignment, and the simulation truth expressed in it.

TEMPORARY minimal version written for issue 14 part C (the validation); issue 14 part A owns this module
and the constraints that define the frame -- the lead reconciles the two.

The frame: the overall position and orientation of the tracking system is fixed to the nominal geometry
(as in Belle II).  The rigid-body motion of the VXD (3 translations, 3 small rotations about the origin) is
the least-squares fit to the displacements of its sensor centres (equal weights).  Its translation and its
rotation about z, applied to the VXD *and* the CDC together (a CDC z shift is the stereo-layer rotation
``cdc_tz_um`` of :mod:`b2luca.alignment.weak_modes`), is the overall motion of the tracking system that
tracks cannot measure; :func:`truth_in_frame` removes it from the truth.  The VXD's rotations about x/y are
kept: CDC layers cannot tilt (dx, dy, dphi only), so the CDC wires fix them and tracks through both
detectors measure them.
"""

from __future__ import annotations

import numpy as np

from ..reco.geometry import Geometry, nominal_geometry
from .weak_modes import mode_matrix, parameter_layout

__all__ = ["FRAME_FIXED", "FRAME_MODES", "frame_motion", "truth_in_frame"]

#: the six rigid-body motions of the VXD, each as (VXD mode, CDC mode that moves with it or None)
FRAME_MODES = (("vxd_tx_um", "cdc_tx_um"), ("vxd_ty_um", "cdc_ty_um"), ("vxd_tz_um", "cdc_tz_um"),
               ("vxd_rx_urad", None), ("vxd_ry_urad", None), ("vxd_rz_urad", "cdc_rz_urad"))
#: which of them define the frame (moved together with the CDC; the others are measured against the CDC)
FRAME_FIXED = (True, True, True, False, False, True)


def _tracking_modes(geom: Geometry) -> np.ndarray:
    cols = []
    for vxd_name, cdc_name in FRAME_MODES:
        col = mode_matrix([vxd_name], geom)[:, 0].copy()
        if cdc_name is not None:
            col += mode_matrix([cdc_name], geom)[:, 0]
        cols.append(col)
    return np.stack(cols, axis=1)


def frame_motion(vxd: np.ndarray, cdc: np.ndarray, geom: Geometry | None = None) -> np.ndarray:
    """The rigid-body motion (tx, ty, tz [um], rx, ry, rz [urad]) of the VXD in a set of alignment parameters."""
    geom = geom or nominal_geometry()
    lay = parameter_layout(geom)
    vec = lay.pack(vxd, cdc)
    m = _tracking_modes(geom)
    shift = np.zeros(lay.size, bool)  # the VXD sensor shifts (du, dv, dw) define the frame
    shift[: 6 * geom.n_sensors] = np.tile([True, True, True, False, False, False], geom.n_sensors)
    sol, *_ = np.linalg.lstsq(m[shift], vec[shift], rcond=None)
    return sol


def truth_in_frame(vxd: np.ndarray, cdc: np.ndarray, geom: Geometry | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The truth ``(vxd (S, 6), cdc (L, 3))`` with the overall tx, ty, tz, rz of the tracking system removed
    (see the module docstring)."""
    geom = geom or nominal_geometry()
    lay = parameter_layout(geom)
    motion = frame_motion(vxd, cdc, geom) * np.array(FRAME_FIXED)
    vec = lay.pack(vxd, cdc) - _tracking_modes(geom) @ motion
    return lay.unpack(vec)
