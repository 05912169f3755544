"""PXD clusterisation: fired pixels grouped into clusters (8-connected neighbours on one sensor in one event)."""

from __future__ import annotations

import numpy as np

from .geometry import PXD_NU, PXD_NV


def clusters(sensor: np.ndarray, pixel: np.ndarray, event: np.ndarray, block: int = 512) -> np.ndarray:
    """Cluster label per fired pixel (8-connected neighbours in the same event and sensor).

    Labels count from 1 in (event, sensor) order, then in raster order on each sensor.  The sensor images
    are labelled ``block`` at a time as one 3D array whose structure connects only within a sensor."""
    from scipy.ndimage import label  # scipy.ndimage is imported only where clusters are made

    out = np.zeros(pixel.size, np.int64)
    key = np.asarray(event, np.int64) * 1_000_000 + np.asarray(sensor, np.int64)
    order = np.argsort(key, kind="stable")
    plane = np.cumsum(np.r_[0, np.diff(key[order]) != 0]) if order.size else np.zeros(0, np.int64)
    iv, iu = np.divmod(np.asarray(pixel, np.int64)[order], PXD_NU)
    structure = np.zeros((3, 3, 3), np.int32)
    structure[1] = 1
    offset = 0
    n_planes = int(plane[-1]) + 1 if plane.size else 0
    bounds = np.searchsorted(plane, np.arange(0, n_planes + block, block))
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if lo == hi:
            continue
        p = plane[lo:hi] - b * block
        img = np.zeros((int(p[-1]) + 1, PXD_NV, PXD_NU), np.int32)
        img[p, iv[lo:hi], iu[lo:hi]] = 1
        lab, nlab = label(img, structure=structure)
        out[order[lo:hi]] = lab[p, iv[lo:hi], iu[lo:hi]] + offset
        offset += nlab
    return out
