"""Tests of the toy detector simulation (issue 3 'Must show')."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from b2luca.conditions import GlobalTag
from b2luca.iov import ExpRun
from b2luca.reco import helix as H
from b2luca.reco.geometry import CDC_DRIFT_VELOCITY, CDC_SIGMA, aligned_frames, nominal_geometry
from b2luca.reco.measurements import vxd_global_derivatives
from b2luca.reco.raw import read_raw, write_raw
from b2luca.sim import make_truth, simulate_bucket, simulate_sample
from b2luca.sim.truth import truth_payloads

GEOM = nominal_geometry()
SEED = 4242


@pytest.fixture(scope="module")
def truth():
    return make_truth(SEED, GEOM)


@pytest.fixture(scope="module")
def mumu(truth, tmp_path_factory):
    """mumu + hadron sample, raw written to disk and read back."""
    rng = np.random.default_rng(1)
    res = simulate_sample("mumu_tight_or_highm_calib", 3000, rng, truth, GEOM)
    path = tmp_path_factory.mktemp("raw") / "raw_0.root"
    write_raw(path, res.raw)
    return res, read_raw([path])


def _vxd_true_local(h: np.ndarray, s: np.ndarray, sensor_index: np.ndarray, params: np.ndarray):
    """Intersection of the true segment helices with the sensors of a given alignment -> local (u, v, tu, tv)."""
    c, r = aligned_frames(GEOM, params)
    c, r = c[sensor_index], r[sensor_index]
    s = H.plane_crossing(h, s, c, r[:, :, 2], n_iter=6)
    loc = np.einsum("nji,nj->ni", r, H.position(h, s) - c)
    d = np.einsum("nji,nj->ni", r, H.direction(h, s))
    return loc[:, 0], loc[:, 1], d[:, 0] / d[:, 2], d[:, 1] / d[:, 2]


def _pull_ok(pull: np.ndarray) -> None:
    n = pull.size
    assert n > 2000
    assert abs(pull.mean()) < 4 / np.sqrt(n)
    assert abs(pull.std() - 1) < 0.05


@pytest.mark.parametrize("det", ["pxd", "svd"])
def test_vxd_pulls_wrt_true_geometry(mumu, truth, det):
    """Measured clusters (read back from the raw file) minus the true track's intersection with the TRUE
    sensor (alignment taken from the truth payload) have the stated resolution."""
    res, raw = mumu
    d = res.digits[det]
    tp = truth_payloads(truth, GEOM)["VXDAlignment"]
    idx = GEOM.sensor_index(raw[det]["sensor"])
    # raw hits are sorted by event (stable) from the digits, so rows correspond
    order = np.argsort(res.tracks.event[d["track"]], kind="stable")
    assert np.array_equal(d["sensor"][order], raw[det]["sensor"])
    u_t, v_t, _, _ = _vxd_true_local(d["true_h"][order], d["true_s"][order], idx, tp["params"])
    _pull_ok((raw[det]["u"] - u_t) / GEOM.sigma_u[idx])
    _pull_ok((raw[det]["v"] - v_t) / GEOM.sigma_v[idx])


def test_cdc_pulls_wrt_true_geometry(mumu, truth):
    res, raw = mumu
    d = res.digits["cdc"]
    order = np.argsort(res.tracks.event[d["track"]], kind="stable")
    c = raw["cdc"]
    h = d["true_h"][order]
    s = H.cylinder_crossing(h, GEOM.cdc_r[c["layer"]], 1.0)
    from b2luca.reco.geometry import cdc_drift_distance

    d_true, _ = cdc_drift_distance(H.position(h, s), c["layer"].astype(np.int64), GEOM, truth.cdc_params,
                                   c["wire"].astype(np.int64))
    meas = c["lr"] * CDC_DRIFT_VELOCITY * (c["tdc"] - truth.cdc_t0[c["board"]])
    _pull_ok((meas - d_true) / CDC_SIGMA)
    assert np.array_equal(GEOM.cdc_board(c["layer"], c["wire"]), c["board"])


def test_residuals_wrt_nominal_show_misalignment(mumu, truth):
    """Residuals w.r.t. the NOMINAL sensors: per-sensor means follow the injected misalignment
    (linearised prediction from the global derivatives), and are far from zero."""
    res, raw = mumu
    means, preds, errs = [], [], []
    for det in ("pxd", "svd"):
        d = res.digits[det]
        order = np.argsort(res.tracks.event[d["track"]], kind="stable")
        idx = GEOM.sensor_index(raw[det]["sensor"])
        u0, v0, tu, tv = _vxd_true_local(d["true_h"][order], d["true_s"][order], idx, np.zeros((GEOM.n_sensors, 6)))
        gu, gv = vxd_global_derivatives(u0, v0, tu, tv)  # d(prediction)/d(params)
        a = truth.vxd_params[idx]
        # measured = prediction in the true frame = nominal prediction + dpred/da . a ; residual = meas - nominal
        pred_u, pred_v = np.sum(gu * a, 1), np.sum(gv * a, 1)
        for r, p, sig in ((raw[det]["u"] - u0, pred_u, GEOM.sigma_u[idx]), (raw[det]["v"] - v0, pred_v, GEOM.sigma_v[idx])):
            n = np.bincount(idx, minlength=GEOM.n_sensors)
            ok = n >= 20
            means.append((np.bincount(idx, r, GEOM.n_sensors) / np.maximum(n, 1))[ok])
            preds.append((np.bincount(idx, p, GEOM.n_sensors) / np.maximum(n, 1))[ok])
            errs.append((np.sqrt(np.bincount(idx, sig ** 2, GEOM.n_sensors)) / np.maximum(n, 1))[ok])
    m, p, e = (np.concatenate(x) for x in (means, preds, errs))
    assert m.size > 200
    # the misalignment is visible: per-sensor mean residuals are many sigma away from zero
    assert np.mean((m / e) ** 2) > 25
    # and it is the injected one: deviations from the prediction are statistical
    chi2 = np.sum(((m - p) / e) ** 2)
    assert chi2 / m.size < 1.3
    assert np.corrcoef(m, p)[0, 1] > 0.98


def test_cosmics_cross_both_hemispheres(truth, tmp_path):
    rng = np.random.default_rng(7)
    res = simulate_sample("cosmic_calib", 400, rng, truth, GEOM)
    path = tmp_path / "raw_0.root"
    write_raw(path, res.raw)
    raw = read_raw(path)["cdc"]
    nw = GEOM.cdc_nwires[raw["layer"]]
    phi_w = GEOM.cdc_phi_offset[raw["layer"]] + 2 * np.pi * raw["wire"] / nw
    y = GEOM.cdc_r[raw["layer"]] * np.sin(phi_w)
    key = raw["gevent"] * 100 + raw["cand"]
    _, inv = np.unique(key, return_inverse=True)
    top = np.bincount(inv, y > 100)
    bottom = np.bincount(inv, y < -100)
    assert top.size > 350
    assert np.mean((top >= 10) & (bottom >= 10)) > 0.9
    # the VXD is crossed twice too: hits in both y halves
    svd = read_raw(path)["svd"]
    yv = GEOM.center[GEOM.sensor_index(svd["sensor"]), 1]
    both = np.bincount(np.unique(svd["gevent"] * 100 + svd["cand"], return_inverse=True)[1], yv > 0)
    assert np.mean(both > 0) > 0.8


def _simulate(tmp: Path, seed: int, runs: list[int] = list(range(1, 9))):
    events = {"cosmic_calib": 5, "mumu_tight_or_highm_calib": 10, "hadron_calib": 5, "bhabha_all_calib": 5,
              "random_calib": 2}
    return simulate_bucket(bucket="t", experiment=26, runs=runs, seed=seed, events=events,
                           data_dir=tmp / "data", conditions_dir=tmp / "cond", files_per_run=2)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bucket")
    return tmp, _simulate(tmp, 11)


def test_rundb_has_flagged_runs(bucket):
    tmp, summary = bucket
    records = json.loads((tmp / "data" / "runs.json").read_text())
    by_run = {r["run"]: r for r in records}
    assert sorted(by_run) == list(range(1, 9))
    assert by_run[3]["run_type"] == "cosmic" and by_run[3]["beam_energy"] == "No Beam"
    assert by_run[5]["quality_expert"]["overall"] == "Bad"
    assert by_run[7]["detectors"]["magnet"] == "Off"
    good = [r for r in records if r["run_type"] == "physics" and r["quality_expert"]["overall"] == "Good"
            and r["detectors"]["magnet"] == "On"]
    assert [r["run"] for r in good] == [1, 2, 4, 6, 8]
    import pandas as pd

    csv = pd.read_csv(tmp / "data" / "runs.csv")
    assert csv.set_index("run").loc[3, "run_type"] == "cosmic"
    assert csv.set_index("run").loc[5, "quality_expert.overall"] == "Bad"
    assert csv.set_index("run").loc[7, "detectors.magnet"] == "Off"
    # data written accordingly
    e = tmp / "data" / "e0026"
    assert sorted(p.name for p in (e / "r00003").iterdir()) == ["cosmic_calib"]
    # magnet-off run: straight tracks (no curvature); the physics runs curve
    straight = read_raw(e / "r00007" / "mumu_tight_or_highm_calib")
    curved = read_raw(e / "r00001" / "mumu_tight_or_highm_calib")
    from b2luca.reco.fit import fit_tracks
    from b2luca.reco.measurements import Constants, build_measurements

    nominal = Constants.nominal(GEOM)
    omega = [np.abs(fit_tracks(build_measurements(r, nominal, GEOM), nominal, GEOM, scattering=False).params[:, 2])
             for r in (straight, curved)]
    assert omega[0].size >= 10 and omega[1].size >= 10
    assert np.median(omega[0]) < 1e-5 < 4e-5 < omega[1].min()
    assert sorted(p.name for p in (e / "r00001" / "hadron_calib").iterdir()) == ["raw_0.root", "raw_1.root"]


def test_conditions_tags(bucket):
    tmp, summary = bucket
    cond = tmp / "cond"
    truth = GlobalTag(cond, "truth_t")
    er = ExpRun(26, 4)
    for name in ("VXDAlignment", "CDCAlignment", "CDCTimeZeros", "SVDTimeOffsets", "ECLCrystalEnergy", "BeamSpot",
                 "PXDMasks"):
        t = truth.read(name, er)
        n = GlobalTag(cond, "nominal_t").read(name, er)
        assert set(n) <= set(t), name
        for k in n:
            assert t[k].shape == n[k].shape, (name, k)
    assert truth.lookup("VXDAlignment", ExpRun(26, 9)) is None  # IoV = bucket
    assert np.abs(truth.read("VXDAlignment", er)["params"]).max() > 0.01
    assert GlobalTag(cond, "staging_pxd_t").read("PXDMasks", er)["status"].any()
    assert "noise_u" in GlobalTag(cond, "staging_svd_t").read("SVDNoise", er)


def test_same_seed_same_arrays(bucket, tmp_path):
    tmp, first = bucket
    second = _simulate(tmp_path, 11)
    _simulate(tmp_path / "other", 12, runs=[1])  # a different seed, compared below
    rel = sorted(p.relative_to(tmp / "data") for p in first.files)
    assert rel == sorted(p.relative_to(tmp_path / "data") for p in second.files)
    a, b = (read_raw([root / "data" / r for r in rel]) for root in (tmp, tmp_path))
    for tree in a:
        for k in a[tree]:
            assert np.array_equal(a[tree][k], b[tree][k]), (tree, k)
    assert a["cdc"]["tdc"].size > 1000
    run1 = [r for r in rel if r.parts[1] == "r00001"]
    c, d = (read_raw([root / "data" / r for r in run1]) for root in (tmp, tmp_path / "other"))
    assert not np.array_equal(c["cdc"]["tdc"][:50], d["cdc"]["tdc"][:50])
    ta, tb = (GlobalTag(r / "cond", "truth_t").read("VXDAlignment", ExpRun(26, 1)) for r in (tmp, tmp_path))
    assert np.array_equal(ta["params"], tb["params"])
