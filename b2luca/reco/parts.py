"""Detector parts that move as a whole: named by ``simulation.movements`` and by the alignment's ``timedep``.

Shared by the simulation (which moves them) and the alignment calibration (which gives them per-interval
parameters and monitors their per-run position).
"""

from __future__ import annotations

import numpy as np

from .geometry import Geometry

__all__ = ["PARTS", "vxd_part_mask"]

#: detector parts, as named by ``simulation.movements`` and the alignment's ``timedep`` configuration
#: (half shells: 0 PXD +x, 1 PXD -x, 2 SVD +x, 3 SVD -x of :attr:`Geometry.halfshell`)
PARTS = ("VXD", "PXD", "SVD", "PXD+X", "PXD-X", "SVD+X", "SVD-X", "CDC")


def vxd_part_mask(geom: Geometry, part: str) -> np.ndarray:
    """(S,) bool: the VXD sensors of ``part`` (all False for "CDC")."""
    hs = {"PXD+X": 0, "PXD-X": 1, "SVD+X": 2, "SVD-X": 3}
    if part == "VXD":
        return np.ones(geom.n_sensors, bool)
    if part == "PXD":
        return geom.is_pxd.copy()
    if part == "SVD":
        return ~geom.is_pxd
    if part in hs:
        return geom.halfshell == hs[part]
    if part == "CDC":
        return np.zeros(geom.n_sensors, bool)
    raise ValueError(f"unknown detector part {part!r}; known: {', '.join(PARTS)}")
