"""Analytic derivatives of the track fit (helix position, predictions) against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.reco import helix as H
from b2luca.reco.fit import _Predictor, fit_tracks
from b2luca.reco.geometry import nominal_geometry

GEOM = nominal_geometry()


def test_position_jacobian_matches_central_differences():
    rng = np.random.default_rng(1)
    n = 400
    h = np.stack([rng.normal(0, 1, n), rng.uniform(-np.pi, np.pi, n), rng.normal(0, 2e-3, n),
                  rng.normal(0, 5, n), rng.normal(0, 1, n)], 1)
    h[:50, 2] = rng.normal(0, 1e-9, 50)  # nearly straight: the series branch
    s = rng.uniform(-800, 800, n)
    jac = H.position_jacobian(h, s)
    for k, eps in enumerate([1e-4, 1e-7, 1e-9, 1e-4, 1e-7]):
        dh = np.zeros(5)
        dh[k] = eps
        num = (H.position(h + dh, s) - H.position(h - dh, s)) / (2 * eps)
        assert np.allclose(jac[..., k], num, rtol=1e-5, atol=1e-6 * np.abs(num).max()), k
    with pytest.raises(AssertionError):  # the comparison can fail: a wrong column is seen
        assert np.allclose(jac[..., 1], jac[..., 0], rtol=1e-5)


@pytest.fixture(scope="module")
def sample(tmp_path_factory, simulated_measurements):
    return simulated_measurements(tmp_path_factory.mktemp("derivs"), 7, (("mumu_tight_or_highm_calib", 200), ("cosmic_calib", 150), ("hadron_calib", 100)), 5)


@pytest.mark.parametrize("tag", ["mumu_tight_or_highm_calib", "cosmic_calib", "hadron_calib"])
def test_prediction_jacobian_matches_central_differences(sample, tag):
    c, all_meas = sample
    meas = all_meas[tag]
    fr = fit_tracks(meas, c, GEOM, scattering=False, n_iter=3)
    h = fr.params[meas.track]
    pr = _Predictor(meas, slice(0, meas.track.size), GEOM, c, fr.arm)
    pred, s = pr(h, update=True)
    jac = pr.jacobian(h, s)
    ok = np.isfinite(pred)
    assert ok.mean() > 0.9
    for k, eps in enumerate([1e-5, 1e-8, 1e-10, 1e-5, 1e-8]):
        dh = np.zeros(5)
        dh[k] = eps
        num = (pr(h + dh, n_iter=4)[0] - pr(h - dh, n_iter=4)[0]) / (2 * eps)
        good = ok & np.isfinite(num)
        scale = np.abs(num[good]).max()
        assert np.allclose(jac[good, k], num[good], rtol=1e-4, atol=1e-5 * scale), (tag, k)
    # the forward differences the fit used before agree to their truncation error
    fwd = pr.derivatives(h, pred)
    good = ok & np.all(np.isfinite(fwd), axis=1)
    assert np.allclose(jac[good], fwd[good], rtol=1e-3, atol=1e-4 * np.abs(fwd[good]).max(axis=0))
    # the fit's local derivatives are the analytic ones
    assert np.allclose(fr.local_derivs[ok], jac[ok], rtol=1e-9, atol=1e-12)


def test_projected_position_jacobian_is_the_contraction():
    rng = np.random.default_rng(2)
    h = np.stack([rng.normal(0, 1, 50), rng.uniform(-3, 3, 50), rng.normal(0, 2e-3, 50), rng.normal(0, 5, 50),
                  rng.normal(0, 1, 50)], 1)
    s, w = rng.uniform(-500, 500, 50), rng.normal(0, 1, (50, 3))
    assert np.allclose(H.projected_position_jacobian(h, s, w), np.einsum("nj,njk->nk", w, H.position_jacobian(h, s)),
                       rtol=1e-12, atol=1e-9)
