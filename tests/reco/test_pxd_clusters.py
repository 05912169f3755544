"""PXD clusterisation: the sparse connected components give scipy.ndimage.label's labels on the dense images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import label

from b2luca.reco import pxd_clusters
from b2luca.reco.geometry import PXD_NU, PXD_NV
from b2luca.reco.pxd_clusters import clusters, connected_pixels


def _dense_labels(sensor, pixel, event):
    """The reference: every (event, sensor) image labelled densely (8-connected), labels counted in
    (event, sensor) order then raster order, as clusters() documents."""
    key = event.astype(np.int64) * 1_000_000 + sensor
    planes, plane = np.unique(key, return_inverse=True)
    img = np.zeros((planes.size, PXD_NV, PXD_NU), np.int32)
    iv, iu = np.divmod(pixel, PXD_NU)
    img[plane, iv, iu] = 1
    structure = np.zeros((3, 3, 3), np.int32)
    structure[1] = 1
    return label(img, structure=structure)[0][plane, iv, iu]


def _pixels(rng, n_events, n_sensors, occupancy):
    n = int(n_events * n_sensors * PXD_NU * PXD_NV * occupancy)
    key = np.unique(rng.integers(0, n_events * n_sensors * PXD_NU * PXD_NV, n))
    rng.shuffle(key)
    plane, pixel = np.divmod(key, PXD_NU * PXD_NV)
    event, s = np.divmod(plane, n_sensors)
    return 1000 + 7 * s, pixel, event + 3


@pytest.mark.parametrize("occupancy", [0.003, 0.03, 0.3])
def test_sparse_clusters_equal_the_dense_labelling(occupancy):
    sensor, pixel, event = _pixels(np.random.default_rng(7), 40, 6, occupancy)
    sensor, pixel, event = (np.r_[a, a[::97]] for a in (sensor, pixel, event))  # some pixels given twice
    got = clusters(sensor, pixel, event)
    expected = _dense_labels(sensor, pixel, event)
    np.testing.assert_array_equal(got, expected)
    assert got.max() > 100  # many clusters, some of several pixels
    assert np.bincount(got).max() > 2


def test_clusters_do_not_cross_sensors_events_or_the_sensor_edges():
    # (row, column) pairs that touch only across a boundary: last column / first column of the next row,
    # the last row of one sensor / the first row of the next sensor, the same pixel in two events
    pixel = np.array([PXD_NU - 1, PXD_NU, (PXD_NV - 1) * PXD_NU + 3, 3, 200, 200, 201])
    sensor = np.array([1, 1, 1, 2, 1, 1, 1])
    event = np.array([0, 0, 0, 0, 1, 2, 2])
    labels = clusters(sensor, pixel, event)
    assert labels.tolist() == [1, 2, 3, 4, 5, 6, 6]


def test_label_order_is_restored_when_the_components_come_in_another_order(monkeypatch):
    sensor, pixel, event = _pixels(np.random.default_rng(8), 10, 3, 0.05)
    expected = _dense_labels(sensor, pixel, event)
    import scipy.sparse.csgraph as csgraph

    real = csgraph.connected_components

    def reversed_labels(graph, directed):  # the same components, numbered backwards
        n, comp = real(graph, directed=directed)
        return n, n - 1 - comp

    monkeypatch.setattr(csgraph, "connected_components", reversed_labels)
    np.testing.assert_array_equal(clusters(sensor, pixel, event), expected)


def test_connected_pixels_counts_patches_and_merges_repeated_pixels():
    fired = np.zeros((3, 4, 5), bool)
    fired[0, 0, 0] = fired[0, 1, 1] = True  # diagonal: one cluster
    fired[0, 3, 4] = True
    fired[1, 0, 4] = fired[2, 0, 0] = True  # patches never connect
    n = connected_pixels(*np.nonzero(fired), 4, 5)[1]
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    assert n == label(fired, structure)[1] == 4
    assert connected_pixels(np.zeros(0), np.zeros(0), np.zeros(0), 4, 5)[1] == 0
    # a pixel given twice is one pixel (the dense image's view): one label, also across its neighbours
    labels, n = connected_pixels(np.array([0, 0, 0, 0]), np.array([1, 3, 1, 2]), np.array([2, 0, 2, 3]), 4, 5)
    assert n == 2 and labels.tolist() == [1, 2, 1, 1]
    assert pxd_clusters.clusters(np.zeros(0), np.zeros(0), np.zeros(0)).size == 0


def test_belle2_event_numbers_do_not_overflow_the_raster_keys():
    """Belle II event numbers are uint32 (up to 4.29e9): (event*1e6 + sensor)*pixels would overflow int64, so the
    planes are ranked first; the labels equal those of the same pixels with small event numbers."""
    rng = np.random.default_rng(7)
    sensor, pixel, event = _pixels(rng, 6, 3, 0.01)
    big = event.astype(np.int64) * 700_000_000 + 4_000_000_000  # up to ~7.5e9, beyond 9.2e18 / (1e6 * pixels)
    np.testing.assert_array_equal(clusters(sensor, pixel, big), clusters(sensor, pixel, event))


def test_a_pixel_outside_the_sensor_is_an_error():
    with pytest.raises(ValueError, match="pixel index outside"):
        clusters(np.zeros(2, np.int64), np.array([0, PXD_NU * PXD_NV]), np.zeros(2, np.int64))
