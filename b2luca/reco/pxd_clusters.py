"""PXD clusterisation: fired pixels grouped into clusters (8-connected neighbours on one sensor in one event)."""

from __future__ import annotations

import numpy as np

from .geometry import PXD_NU, PXD_NV

#: the neighbours of a pixel (row, column) that come after it in raster order: each pair is linked once
_FORWARD = ((0, 1), (1, -1), (1, 0), (1, 1))


def connected_pixels(plane: np.ndarray, row: np.ndarray, column: np.ndarray, n_rows: int, n_columns: int
                     ) -> tuple[np.ndarray, int]:
    """(label per pixel counting from 1, number of labels) of the 8-connected groups of the pixels at
    (``plane``, ``row``, ``column``) of images ``n_rows`` x ``n_columns``, groups never crossing planes (any int64 plane ids, ordered as
    given, below 2**63 / (``n_rows`` x ``n_columns``)); a pixel given twice gets one label.

    Sparse: the pixels are sorted by their raster key, each one's forward neighbours found by binary search
    and the groups are the connected components of that graph (scipy.sparse.csgraph), so the cost grows
    with the pixels, not with the image area.  Labels are numbered in the order of each group's first pixel
    in (plane, row, column) raster order: the numbering of ``scipy.ndimage.label`` on the dense stack."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = np.asarray(row).size
    if n == 0:
        return np.zeros(0, np.int64), 0
    key = (np.asarray(plane, np.int64) * n_rows + np.asarray(row, np.int64)) * n_columns + np.asarray(column, np.int64)
    order = np.argsort(key)
    skey = key[order]  # raster order: the forward neighbours' keys are sorted too (fast binary search)
    same = np.flatnonzero(skey[1:] == skey[:-1])  # a pixel given twice: one pixel, one label (as dense images)
    srow, scol = np.divmod(skey, n_columns)
    srow %= n_rows
    src, dst = [same], [same + 1]
    for dr, dc in _FORWARD:
        target = skey + dr * n_columns + dc
        pos = np.minimum(np.searchsorted(skey, target), n - 1)
        hit = (scol + dc >= 0) & (scol + dc < n_columns) & (srow + dr < n_rows) & (skey[pos] == target)
        src.append(np.flatnonzero(hit))
        dst.append(pos[hit])
    i, j = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(i.size, np.int8), (i, j)), shape=(n, n)).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    top = np.maximum.accumulate(comp)
    if not (top[0] == 0 and np.all(np.diff(top) <= 1)):  # labels not yet in the order of their first pixel
        first = np.unique(comp, return_index=True)[1]  # each group's first pixel in raster order
        rank = np.empty(n_comp, np.int64)
        rank[comp[np.sort(first)]] = np.arange(n_comp)
        comp = rank[comp]
    out = np.empty(n, np.int64)
    out[order] = comp + 1
    return out, n_comp


def clusters(sensor: np.ndarray, pixel: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Cluster label per fired pixel (8-connected neighbours in the same event and sensor).

    Labels count from 1 in (event, sensor) order, then in raster order on each sensor
    (:func:`connected_pixels`: sparse, the cost grows with the fired pixels, not the sensor area)."""
    pixel = np.asarray(pixel, np.int64)
    if pixel.size and (pixel.min() < 0 or pixel.max() >= PXD_NU * PXD_NV):
        raise ValueError(f"PXD clusters: pixel index outside 0..{PXD_NU * PXD_NV - 1} "
                         f"(got {pixel.min()}..{pixel.max()})")
    # planes ranked in (event, sensor) order: the raster keys stay small for any event number (uint32 in Belle II)
    plane = np.unique(np.asarray(event, np.int64) * 1_000_000 + np.asarray(sensor, np.int64), return_inverse=True)[1]
    iv, iu = np.divmod(pixel, PXD_NU)
    return connected_pixels(plane, iv, iu, PXD_NV, PXD_NU)[0]
