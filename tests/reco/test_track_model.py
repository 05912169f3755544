"""The broken-line track model shared by reconstruction and alignment."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import records_from_dense
from b2luca.reco import helix as H
from b2luca.reco.geometry import nominal_geometry
from b2luca.reco.measurements import Constants, build_measurements
from b2luca.reco.track_model import BeamSpotConstraint, beam_spot_rows, fit_track_model
from b2luca.sim.simulate import simulate_sample
from b2luca.sim.truth import make_truth


@pytest.fixture(scope="module")
def model():
    g = nominal_geometry()
    truth = make_truth(3, g)
    const = Constants.from_payloads({}, g)
    const.cdc_t0 = truth.cdc_t0.copy()
    const.vxd_params, const.cdc_params = truth.vxd_params.copy(), truth.cdc_params.copy()
    raw = simulate_sample("hadron_calib", 60, np.random.default_rng(4), truth, g).raw
    raw = {t: {**c, "gevent": c["event"] - 1} for t, c in raw.items()}
    meas = build_measurements(raw, const)
    return fit_track_model(meas, const, mass=0.1395704), truth


def test_records_reproduce_the_fit(model):
    tm, _ = model
    assert tm.n_tracks > 100 and tm.failed < 0.1 * (tm.n_tracks + tm.failed)
    # soft pions with kinks as local parameters: chi2/ndf ~ 1 (helix-only fits give ~10)
    c2 = tm.chi2 / tm.ndf
    assert 0.9 < np.median(c2) < 1.1
    assert np.all(tm.n_local >= 5) and np.all(tm.kink_sigma > 0)
    np.testing.assert_array_equal(np.bincount(tm.kink_track, minlength=tm.n_tracks), tm.n_local - 5)
    value, sigma, local, lab, der, ptr = tm.dense_rows()
    recs = records_from_dense(value, sigma, local, lab, der, ptr)
    assert recs.n_records == tm.n_tracks
    # every record at the fit's minimum: the local least-squares step is ~0 and the chi2 is the track's
    for t in range(0, tm.n_tracks, max(1, tm.n_tracks // 25)):
        r = slice(ptr[t], ptr[t + 1])
        a, y, w = local[r][:, : tm.n_local[t]], value[r], 1 / sigma[r] ** 2
        gam = a.T @ (w[:, None] * a)
        step = np.linalg.solve(gam, a.T @ (w * y))
        err = np.sqrt(np.diag(np.linalg.inv(gam)))
        assert np.max(np.abs(step / err)) < 0.05
        assert np.sum(w * y * y) == pytest.approx(tm.chi2[t], rel=1e-3, abs=1e-3)
    # a subset of tracks keeps its rows in track order
    sub = np.array([1, 5, 7])
    v2, *_, p2 = tm.dense_rows(sub)
    np.testing.assert_array_equal(np.diff(p2), np.diff(ptr)[sub])
    np.testing.assert_array_equal(v2[p2[1]:p2[2]], value[ptr[5]:ptr[6]])


def test_beam_spot_rows(model):
    tm, truth = model
    bs = BeamSpotConstraint((float(truth.beam_position[0]), float(truth.beam_position[1])), (0.01, 0.0002), (91, 92))
    t = np.arange(tm.n_tracks)
    ex = beam_spot_rows(tm, t, bs)
    # the pulls of the d0 against the true beam spot follow the beam size plus the track error
    d0_err = np.sqrt(tm.cov[:, 0, 0])
    pull = ex.value / np.hypot(ex.sigma, d0_err)
    assert abs(np.mean(pull)) < 0.3 and 0.7 < np.std(pull) < 1.3
    # derivatives: the prediction d0 - (bx sin phi - by cos phi), numerically
    eps = 1e-6
    bs2 = BeamSpotConstraint((bs.position[0] + eps, bs.position[1]), bs.size, bs.labels)
    np.testing.assert_allclose(-(beam_spot_rows(tm, t, bs2).value - ex.value) / eps, ex.glb_der[:, 0], atol=1e-6)
    np.testing.assert_allclose(ex.local[:, 0], 1.0)
    np.testing.assert_array_equal(ex.glb_label, np.tile([91, 92], (t.size, 1)))
    assert np.all(np.abs(H.momentum(tm.params)) > 0)
    rows = tm.dense_rows(extra=ex)
    assert rows[0].size == tm.dense_rows()[0].size + t.size
