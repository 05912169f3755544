"""PXD clusterisation: fired pixels grouped into clusters (8-connected neighbours on one sensor in one event)."""

from __future__ import annotations

import numpy as np

from .geometry import PXD_NU, PXD_NV


def clusters(sensor: np.ndarray, pixel: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Cluster label per fired pixel (8-connected neighbours in the same event and sensor)."""
    from scipy.ndimage import label  # scipy.ndimage is imported only where clusters are made

    out = np.zeros(pixel.size, np.int64)
    key = np.asarray(event, np.int64) * 1_000_000 + np.asarray(sensor, np.int64)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    offset = 0
    for chunk in np.split(order, bounds):
        if chunk.size == 0:
            continue
        img = np.zeros((PXD_NV, PXD_NU), np.int32)
        iv, iu = np.divmod(pixel[chunk], PXD_NU)
        img[iv, iu] = 1
        lab, nlab = label(img, structure=np.ones((3, 3)))
        out[chunk] = lab[iv, iu] + offset
        offset += nlab
    return out
