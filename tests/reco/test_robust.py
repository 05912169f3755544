"""The robust batch fit (b2luca.reco.robust): same tracks as one plain fit, a failing candidate costs only itself."""

from __future__ import annotations

import numpy as np
import pytest

import b2luca.reco.robust as robust
from b2luca.reco.fit import fit_tracks
from b2luca.reco.geometry import nominal_geometry
from b2luca.reco.measurements import Constants, build_measurements
from b2luca.reco.robust import FIT_ITERATIONS, RobustFit, fit_robust, subset_measurements
from b2luca.sim import make_truth, simulate_sample
from b2luca.sim.truth import truth_payloads

GEOM = nominal_geometry()


@pytest.fixture(scope="module")
def sample():
    truth = make_truth(7, GEOM)
    constants = Constants.from_payloads(truth_payloads(truth, GEOM), GEOM)
    res = simulate_sample("mumu_tight_or_highm_calib", 120, np.random.default_rng(11), truth, GEOM,
                          experiment=26, run=1)
    raw = {t: {**cols, "gevent": np.asarray(cols["event"]) - 1} for t, cols in res.raw.items()}
    return build_measurements(raw, constants, GEOM), constants


def _check_consistent(fit: RobustFit, n: int) -> None:
    assert fit.meas.n_tracks == n == fit.params.shape[0] == fit.cov.shape[0] == fit.chi2.size == fit.ndf.size
    assert fit.residual is not None and fit.residual.size == fit.meas.track.size
    assert np.array_equal(np.unique(fit.meas.track), np.arange(n))


def test_all_candidates_fitted_like_one_plain_fit(sample):
    meas, constants = sample
    fit = fit_robust(meas, constants, chunk=64)
    plain = fit_tracks(meas, constants, n_iter=FIT_ITERATIONS, scattering=False)
    assert fit.failed == 0 and plain.ok.all()
    _check_consistent(fit, meas.n_tracks)
    assert np.array_equal(fit.meas.track_key, meas.track_key)
    err = np.sqrt(np.einsum("tii->ti", plain.cov))
    assert np.max(np.abs(fit.params - plain.params) / err) < 1e-3  # chunks converge like the whole batch
    assert fit.local_derivs is None and fit.global_labels is None  # only the requested row arrays


def test_a_failing_candidate_is_dropped_alone(sample, monkeypatch):
    meas, constants = sample
    bad_key = tuple(meas.track_key[37])
    calls = []

    def fragile_fit(sub, *args, **kwargs):
        calls.append(sub.n_tracks)
        if any(tuple(k) == bad_key for k in sub.track_key):
            raise np.linalg.LinAlgError("singular system")
        return fit_tracks(sub, *args, **kwargs)

    monkeypatch.setattr(robust, "fit_tracks", fragile_fit)
    fit = fit_robust(meas, constants, chunk=50, row_keys=robust.ROW_KEYS)
    assert fit.failed == 1
    _check_consistent(fit, meas.n_tracks - 1)
    keep = np.array([tuple(k) != bad_key for k in meas.track_key])
    assert np.array_equal(fit.meas.track_key, meas.track_key[keep])
    assert min(calls) == 1 and max(calls) == 50  # bisected down to the single candidate
    for rows in (fit.local_derivs, fit.global_derivs, fit.global_labels):
        assert rows is not None and rows.shape[0] == fit.meas.track.size
    expected = subset_measurements(meas, np.flatnonzero(keep))
    assert np.array_equal(fit.meas.m, expected.m) and np.array_equal(fit.meas.track, expected.track)


def test_unknown_row_key_is_named(sample):
    meas, constants = sample
    with pytest.raises(ValueError, match="unknown row key.*'residuals'"):
        fit_robust(meas, constants, row_keys=("residuals",))


def test_a_warm_start_of_another_length_is_refused(sample):
    """One start per candidate, in order: a start of another length would give candidates another track's
    parameters (or an IndexError deep in the bisection), so it is refused up front."""
    from b2luca.reco.fit import START_KINKS, TrackStart

    meas, constants = sample
    n = meas.n_tracks + 1
    start = TrackStart(params=np.full((n, 5), np.nan), kinks=np.zeros((n, START_KINKS)))
    with pytest.raises(ValueError, match="warm start"):
        robust.fit_bisecting(meas, constants, chunk=64, n_iter=FIT_ITERATIONS, scattering=True, start=start)


def test_helix_covariance_is_the_helix_block_of_the_inverse():
    """The helix covariance from 5 columns equals the 5x5 block of the full inverse of the (scaled) normal
    matrices, kinks profiled, unscaled."""
    from b2luca.reco.fit import _helix_covariance

    rng = np.random.default_rng(3)
    m = rng.normal(size=(4, 13, 13))
    a = m @ m.transpose(0, 2, 1) + 13 * np.eye(13)
    scale = rng.uniform(0.5, 2.0, size=(4, 13))
    expected = np.linalg.inv(a)[:, :5, :5] * scale[:, :5, None] * scale[:, None, :5]
    np.testing.assert_allclose(_helix_covariance(a, scale, np.eye(13)), expected, rtol=1e-12, atol=0)
