"""The PXD beam-background generator (the input a background GAN learns from)."""

from __future__ import annotations

import numpy as np

from b2luca.reco.geometry import PXD_NU, PXD_NV, nominal_geometry
from b2luca.reco.pxd_clusters import clusters
from b2luca.sim import pxd_background as B


def test_occupancy_layers_edges_and_clusters():
    geom = nominal_geometry()
    n_events = 40
    bkg = B.pxd_background(np.random.default_rng(11), n_events, geom)
    npix = PXD_NU * PXD_NV
    n_sensors = int(geom.is_pxd.sum())
    occupancy = bkg["pixel"].size / (n_events * n_sensors * npix)
    assert 0.006 < occupancy < 0.014  # about 1 %
    assert np.all(bkg["adc"] > B.ADC_THRESHOLD)
    layer = bkg["sensor"] // 10000
    per_sensor = {lay: np.sum(layer == lay) / np.sum(geom.layer[geom.is_pxd] == lay) for lay in (1, 2)}
    ratio = per_sensor[1] / per_sensor[2]
    assert abs(ratio - B.LAYER_SCALE[1] / B.LAYER_SCALE[2]) < 0.1
    iv = bkg["pixel"] // PXD_NU
    edge = np.mean((iv < 15) | (iv >= PXD_NV - 15))  # 20 % of the rows
    assert edge > 0.24  # edge-enhanced profile: 1 + 0.8|v| gives about 0.26
    # no pixel twice in one (event, sensor)
    key = (bkg["event"] * 1_000_000 + bkg["sensor"]) * npix + bkg["pixel"]
    assert np.unique(key).size == key.size
    labels = clusters(bkg["sensor"], bkg["pixel"], bkg["event"])
    sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
    assert 1.5 < sizes.mean() < 5.0
    assert np.mean(sizes == 1) > 0.1 and np.mean(sizes >= 5) > 0.05  # compact clusters and short tracks


def test_random_calib_gets_the_background_tree_and_keeps_its_digits(monkeypatch):
    from b2luca.sim import make_truth, simulate_sample
    from b2luca.sim import simulate as simulate_module

    truth = make_truth(5)
    with_bkg = simulate_sample("random_calib", 5, np.random.default_rng(9), truth, experiment=26, run=1)
    monkeypatch.setattr(simulate_module, "PXD_BKG_TAGS", ())
    without = simulate_sample("random_calib", 5, np.random.default_rng(9), truth, experiment=26, run=1)
    assert with_bkg.raw["pxd_bkg"]["event"].size > 0 and "pxd_bkg" not in without.raw
    for tree, cols in without.raw.items():
        for branch, values in cols.items():
            np.testing.assert_array_equal(with_bkg.raw[tree][branch], values, err_msg=f"{tree}.{branch}")
    assert with_bkg.raw["pxd_bkg"]["event"].min() >= 1  # event numbers 1..n like the other trees


def test_raw_files_written_before_the_new_trees_still_read(tmp_path):
    """Raw data simulated before issue 16 lack ecl_full and pxd_bkg: they read as empty trees."""
    from b2luca.reco.raw import OPTIONAL_TREES, RAW_BRANCHES, read_raw
    from b2luca.rootio import write_trees

    old = {t: {b: np.zeros(0, dt) for b, dt in br.items()} for t, br in RAW_BRANCHES.items() if t not in OPTIONAL_TREES}
    old["event"] = {"event": np.arange(1, 4), "n_cand": np.zeros(3, np.int32), "exp": np.full(3, 26, np.int32),
                    "run": np.ones(3, np.int32)}
    write_trees(tmp_path / "raw_0.root", old)
    data = read_raw(tmp_path)
    assert data["event"]["event"].tolist() == [1, 2, 3]
    assert all(data[t]["event"].size == 0 and "gevent" in data[t] for t in OPTIONAL_TREES)


def test_clusters_label_each_sensor_image_as_scipy_does_one_image_at_a_time():
    from scipy.ndimage import label

    from b2luca.reco.geometry import PXD_NU, PXD_NV, nominal_geometry
    from b2luca.sim.pxd_background import pxd_background

    geom = nominal_geometry()
    px = pxd_background(np.random.default_rng(4), 3, geom)
    perm = np.random.default_rng(0).permutation(px["event"].size)  # any input order
    sensor, pixel, event = px["sensor"][perm], px["pixel"][perm], px["event"][perm]
    got = clusters(sensor, pixel, event)  # every (event, sensor) image at once (sparse labelling)
    expected = np.zeros(pixel.size, np.int64)
    offset = 0
    for e, s in sorted(set(zip(event.tolist(), sensor.tolist()))):
        sel = np.flatnonzero((event == e) & (sensor == s))
        img = np.zeros((PXD_NV, PXD_NU), np.int32)
        iv, iu = np.divmod(pixel[sel], PXD_NU)
        img[iv, iu] = 1
        lab, n = label(img, structure=np.ones((3, 3)))
        expected[sel] = lab[iv, iu] + offset
        offset += n
    np.testing.assert_array_equal(got, expected)
    assert clusters(sensor[:0], pixel[:0], event[:0]).size == 0


def test_background_on_chosen_sensors_is_the_full_simulation_there():
    """The pull study's overlay makes only the hit sensors: the same pixels there as the full simulation."""
    geom = nominal_geometry()
    pxd = np.flatnonzero(geom.is_pxd)
    n_events = 12
    full = B.pxd_background(np.random.default_rng(5), n_events, geom)
    on = np.random.default_rng(6).random((n_events, pxd.size)) < 0.3
    part = B.pxd_background(np.random.default_rng(5), n_events, geom, sensors=on)
    keep = on[full["event"], np.searchsorted(pxd, geom.sensor_index(full["sensor"]))]
    assert 0 < keep.sum() < keep.size
    for key in ("event", "sensor", "pixel", "adc"):
        np.testing.assert_array_equal(part[key], full[key][keep], err_msg=key)
