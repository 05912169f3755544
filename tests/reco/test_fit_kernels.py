"""The track fit's compiled row kernels against the numpy predictions and derivatives (the same formulas)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.reco import _kernels as K
from b2luca.reco import helix as H
from b2luca.reco.fit import _Predictor, fit_tracks
from b2luca.reco.geometry import nominal_geometry
from b2luca.reco.robust import fit_robust, subset_measurements

GEOM = nominal_geometry()


@pytest.fixture(scope="module")
def sample(tmp_path_factory, simulated_measurements):
    return simulated_measurements(tmp_path_factory.mktemp("kernels"), 5, (("mumu_tight_or_highm_calib", 150),
                                                                          ("cosmic_calib", 100), ("hadron_calib", 100)), 9)


@pytest.mark.parametrize("tag", ["mumu_tight_or_highm_calib", "cosmic_calib", "hadron_calib"])
def test_kernel_rows_equal_the_numpy_rows(sample, tag):
    c, all_meas = sample
    meas = all_meas[tag]
    fr = fit_tracks(meas, c, GEOM, scattering=False, n_iter=3)
    # evaluate a little off the fitted helices, so that the Newton steps onto the sensor planes have work to do
    h = fr.params[meas.track] + np.array([0.05, 1e-4, 1e-6, 0.1, 1e-4])
    rows = slice(0, meas.track.size)
    ref = _Predictor(meas, rows, GEOM, c, fr.arm)  # both start from the layer cylinders (6 Newton steps)
    comp = _Predictor(meas, rows, GEOM, c, fr.arm)
    pred_np, s_np = ref(h)  # numpy
    jac_np = ref.jacobian(h, s_np)
    pred_k, s_k = comp(h, update=True)  # compiled
    jac_k = comp.jacobian(h, s_k)
    fin = np.isfinite(pred_np)
    assert fin.mean() > 0.9
    assert np.array_equal(np.isfinite(pred_k), fin)  # the same rows reach their layer
    assert np.allclose(s_k[fin], s_np[fin], rtol=1e-12, atol=1e-9)
    assert np.max(np.abs(pred_k - pred_np)[fin] / meas.sigma[fin]) < 1e-8
    scale = np.abs(jac_np[fin]).max(axis=0)
    assert np.all(np.abs(jac_k[fin] - jac_np[fin]) <= 1e-9 * scale)
    # a wrong derivative column is seen by this comparison
    wrong = jac_k.copy()
    wrong[:, 2] *= 1 + 1e-6
    assert not np.all(np.abs(wrong[fin] - jac_np[fin]) <= 1e-9 * scale)
    # the local track state of the VXD rows and the CDC crossing points
    u, v, tu, tv = comp.vxd_local
    vxd = ref.vxd
    loc = np.einsum("nji,nj->ni", ref.r, H.position(h[vxd], s_np[vxd]) - ref.c)
    d = np.einsum("nji,nj->ni", ref.r, H.direction(h[vxd], s_np[vxd]))
    assert np.allclose(np.stack([u, v], 1), loc[:, :2], rtol=0, atol=1e-9)
    assert np.allclose(np.stack([tu, tv], 1), d[:, :2] / d[:, 2:], rtol=1e-9, atol=1e-12)
    cdc = ref.cdc[fin[ref.cdc]]
    assert np.allclose(comp.cdc_x[fin[ref.cdc]], H.position(h[cdc], s_np[cdc]), rtol=0, atol=1e-9)


def test_cdc_kernel_gives_nan_where_the_layer_is_not_reached():
    h = np.array([[0.0, 0.3, 1.0 / 200.0, 0.0, 0.1],  # radius 200 mm: never reaches r = 500 mm
                  [0.0, 0.3, 1e-4, 0.0, 0.1]])
    one = np.ones(2)
    pred, s, jac = np.zeros(2), np.zeros(2), np.zeros((2, 5))
    x = K.cdc_rows(h, np.arange(2), one, 500.0 * one, 0.0 * one, 0.0 * one, 0.0 * one, np.zeros((2, 3)), pred, s, jac)
    assert np.isnan(pred[0]) and np.isnan(s[0]) and np.all(np.isnan(jac[0])) and np.all(np.isnan(x[0]))
    assert np.all(np.isfinite(jac[1])) and np.isclose(np.hypot(x[1, 0], x[1, 1]), 500.0)


def test_degenerate_rows_give_nan_not_an_exception():
    """A division by exactly zero (numba's default error model raises ZeroDivisionError) gives inf/NaN, as the
    numpy rows do, so that the fit leaves the candidate out instead of stopping."""
    zero, one = np.zeros(1, np.int64), np.ones(1)
    # a straight track (omega 0, tanl 0) parallel to a sensor plane with normal z: d(plane distance)/ds = 0
    h = np.array([[0.0, 0.3, 0.0, 5.0, 0.0]])
    pred, s, jac = np.zeros(1), np.zeros(1), np.zeros((1, 5))
    local = K.vxd_rows(h, zero, one, 3, np.zeros((1, 3)), np.eye(3).reshape(1, 3, 3).copy(), zero, pred, s, jac)
    assert not np.isfinite(pred[0]) and not np.all(np.isfinite(jac)) and not np.all(np.isfinite(local))
    # a straight track tangent to the layer cylinder (d0 = radius, phi0 = 0): x t_x + y t_y = 0 at the crossing
    h = np.array([[500.0, 0.0, 0.0, 0.0, 0.1]])
    pred, s, jac = np.zeros(1), np.zeros(1), np.zeros((1, 5))
    K.cdc_rows(h, zero, one, 500.0 * one, 0.0 * one, 0.0 * one, 0.0 * one, np.zeros((1, 3)), pred, s, jac)
    assert not np.all(np.isfinite(jac))


@pytest.mark.parametrize("tag", ["mumu_tight_or_highm_calib", "hadron_calib"])
def test_production_fit_keeps_every_candidate(sample, tag):
    c, all_meas = sample
    meas = all_meas[tag]
    fit = fit_robust(meas, c)
    assert fit.failed == 0 and fit.params.shape[0] == meas.n_tracks
    assert np.all(np.isfinite(fit.params)) and np.all(fit.ndf > 0)


def test_fit_without_global_derivatives_is_the_same_fit(sample):
    c, all_meas = sample
    meas = all_meas["mumu_tight_or_highm_calib"]
    full = fit_tracks(meas, c, GEOM, scattering=False, n_iter=4)
    lean = fit_tracks(meas, c, GEOM, scattering=False, n_iter=4, global_derivatives=False)
    for key in ("params", "cov", "chi2", "ndf", "residual", "local_derivs"):
        assert np.array_equal(getattr(lean, key), getattr(full, key), equal_nan=True), key
    assert lean.global_derivs.shape == (0, 6) and lean.global_labels.shape == (0, 6)
    assert np.any(full.global_derivs != 0)


def test_subset_of_a_range_of_candidates(sample):
    _c, all_meas = sample
    meas = all_meas["hadron_calib"]
    sub = subset_measurements(meas, np.arange(3, 11))
    keep = (meas.track >= 3) & (meas.track < 11)
    assert np.array_equal(sub.track, meas.track[keep] - 3)
    assert np.array_equal(sub.track_key, meas.track_key[3:11])
    assert np.array_equal(sub.m, meas.m[keep]) and np.array_equal(sub.approx_pos, meas.approx_pos[keep])
    gaps = subset_measurements(meas, np.array([3, 5, 10]))  # not a range: the general selection
    assert np.array_equal(np.bincount(gaps.track), np.bincount(meas.track)[[3, 5, 10]])
    order = np.array([3, 5, 4, 6])  # the span of a range but shuffled: not taken for one
    shuffled = subset_measurements(meas, order)
    keep = np.isin(meas.track, order)
    remap = np.full(meas.n_tracks, -1)
    remap[order] = np.arange(order.size)
    assert np.array_equal(shuffled.track_key, meas.track_key[order])
    assert np.array_equal(shuffled.track, remap[meas.track[keep]])


def test_kink_columns_are_the_contraction_before_the_hit():
    rng = np.random.default_rng(4)
    n_rows, n_groups, n_scat = 300, 40, 8
    d = rng.normal(size=(n_rows, 5))
    j2 = rng.normal(size=(n_groups, 5, 2 * n_scat))
    group = rng.integers(0, n_groups, n_rows)
    n_before = rng.integers(0, n_scat + 1, n_rows)
    slot = rng.integers(0, 2, n_rows)
    loc = np.zeros((n_rows, 5 + 4 * n_scat))
    K.kink_columns(d, j2, group, n_before, slot, loc)
    want = np.einsum("rk,rkc->rc", d, j2[group]) * (np.arange(2 * n_scat)[None, :] // 2 < n_before[:, None])
    expected = np.zeros_like(loc)
    for arm in (0, 1):
        cols = slice(5 + 2 * n_scat * arm, 5 + 2 * n_scat * (arm + 1))
        expected[:, cols] = np.where((slot == arm)[:, None], want, 0.0)
    assert np.allclose(loc, expected, rtol=1e-13, atol=1e-13)
    assert np.all(loc[:, :5] == 0)
