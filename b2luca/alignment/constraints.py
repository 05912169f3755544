"""Frame constraints of the VXD+CDC alignment, and pede constraint files (writer and reader).

The global frame (what tracks cannot see: a motion of the whole tracking system together with the beam
spot) is fixed against the nominal geometry by linear constraints on the VXD sensor parameters.  A rigid
motion (T, w) of the VXD changes sensor s's parameters (du, dv, dw, alpha, beta, gamma) by
``A_s (T, w)`` with ``A_s = [[R_sᵀ, R_sᵀ [−c_s]ₓ], [0, R_sᵀ]]`` (R_s, c_s: nominal rotation and centre);
the constraint for the degree of freedom k is ``Σ_s (A_s)ᵀ_k p_s = 0`` for the *total* parameters p
(current value + correction): the VXD is, in the least-squares sense, where the nominal geometry puts it.

Which degrees of freedom define the frame (:data:`FRAME_DOFS`): the translations x, y, z and the rotation
about z of the tracking system, fixed against the nominal geometry as in Belle II.  x, y and the rotation
about z are exact invariances of the data (the CDC layers (dx, dy, dphi) and the beam-spot position (x, y)
follow them); z is seen only through the CDC stereo layers, far too weakly (left free, the VXD z position
wanders by hundreds of micrometres).  The tilts of the VXD about x and y are NOT fixed: the CDC layers of
this detector model cannot tilt (no such parameters), so the CDC wires define the tilt and the tracks through
both detectors measure the VXD's tilt against them (error ~4 urad in the demo).  Fixing them too (all six)
forces a true VXD tilt against the CDC -- the demo truth has ~100 urad -- into a CDC distortion that its
(dx, dy, dphi) parameters cannot describe: fitted - true then shows VXD du pulls of width ~2.4, a VXD ry
residual of ~48 +- 4 urad and CDC trends (issue 14's "bias").  ``dofs`` selects other sets for studies.
:func:`b2luca.alignment.frame.truth_in_frame` removes the same motion from a truth.

Files use pede's text format::

    Constraint <value>
    <label> <factor>
    ...

read back with :func:`read_constraints` (pede's own parser of :mod:`.steering`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..reco.geometry import Geometry
from .steering import Constraint, read_text_file

__all__ = ["FRAME_DOFS", "FRAME_NAMES", "frame_constraints", "read_constraints", "rigid_motion_jacobian", "vxd_labels",
           "write_constraints"]

#: Names of the six frame constraints, in order.
FRAME_NAMES = ("VXD translation x", "VXD translation y", "VXD translation z",
               "VXD rotation about x", "VXD rotation about y", "VXD rotation about z")
#: The degrees of freedom (indices into :data:`FRAME_NAMES`) that define the frame: translations x, y, z and the
#: rotation about z (the tilts are measured against the CDC wires; see the module docstring).
FRAME_DOFS = (0, 1, 2, 5)


def vxd_labels(geom: Geometry) -> np.ndarray:
    """(S, 6) Millepede labels of the sensor parameters: ``sensor_id * 10 + k``, k = 1..6."""
    return geom.sensor_id.astype(np.int64)[:, None] * 10 + np.arange(1, 7)


def rigid_motion_jacobian(geom: Geometry) -> np.ndarray:
    """(S, 6, 6): d(sensor params)/d(T_x, T_y, T_z, w_x, w_y, w_z) of a small rigid motion of the VXD
    about the origin (first order; params as in :func:`b2luca.reco.geometry.aligned_frames`)."""
    rt = np.swapaxes(geom.rot, 1, 2)
    c = geom.center
    cross = np.zeros((c.shape[0], 3, 3))  # [c]x such that [c]x w = c x w; w x c = -[c]x w
    cross[:, 0, 1], cross[:, 0, 2] = -c[:, 2], c[:, 1]
    cross[:, 1, 0], cross[:, 1, 2] = c[:, 2], -c[:, 0]
    cross[:, 2, 0], cross[:, 2, 1] = -c[:, 1], c[:, 0]
    a = np.zeros((c.shape[0], 6, 6))
    a[:, :3, :3] = rt
    a[:, :3, 3:] = -rt @ cross
    a[:, 3:, 3:] = rt
    return a


def frame_constraints(geom: Geometry, current_vxd: np.ndarray | None = None,
                      dofs: tuple[int, ...] = FRAME_DOFS, sensors: np.ndarray | None = None) -> list[Constraint]:
    """The frame constraints ``Σ_s (A_s)ᵀ_k (p_s + Δp_s) = 0`` (k in ``dofs``) on the corrections Δp of the
    VXD labels (:func:`vxd_labels`), given the parameters ``current_vxd`` (S, 6) in force (nominal: zeros).

    ``sensors``: (S,) bool, the sensors that define the frame (default all).  Leave out sensors that the fit
    does not measure (pede's ``entries``): held at their start values (nominal), they would pull the frame of
    the measured sensors towards that start (e.g. 3 unmeasured outer sensors ~50 um off turn the demo's
    VXD by ~20 urad about z against the truth)."""
    a = rigid_motion_jacobian(geom)
    if sensors is not None:
        a = a * np.asarray(sensors, bool)[:, None, None]
    cur = np.zeros((geom.n_sensors, 6)) if current_vxd is None else np.asarray(current_vxd, float)
    labels = vxd_labels(geom).ravel()
    out = []
    for k in dofs:
        name = FRAME_NAMES[k]
        f = a[:, :, k].ravel()  # factor of each (sensor, param) label
        keep = f != 0
        out.append(Constraint(value=-float(f @ cur.ravel()), labels=labels[keep], factors=f[keep],
                              origin=f"frame: {name}"))
    return out


def write_constraints(path: str | os.PathLike, constraints: list[Constraint]) -> Path:
    """Write ``constraints`` as a pede constraint text file (``Constraint``/``Measurement`` blocks, one
    ``label factor`` pair per line, a ``!`` comment with each origin); atomic. Returns the path."""
    path = Path(path)
    lines = []
    for c in constraints:
        if c.origin:
            lines.append(f"! {c.origin}")
        head = f"Constraint {c.value!r}" if c.sigma is None else f"Measurement {c.value!r} {c.sigma!r}"
        lines.append(head)
        lines += [f"{int(lab)} {float(f)!r}" for lab, f in zip(c.labels, c.factors)]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return path


def read_constraints(path: str | os.PathLike) -> list[Constraint]:
    """Read a pede constraint text file (errors name the file and line: :class:`~.errors.SteeringError`)."""
    return list(read_text_file(path).constraints)
