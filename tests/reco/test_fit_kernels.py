"""The track fit's compiled row kernels against the numpy predictions and derivatives (the same formulas)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.reco import _kernels as K
from b2luca.reco import helix as H
from b2luca.reco.fit import (_helix_covariance, _kink_jacobians, _kink_jacobians_numpy, _Predictor,
                             _seed_tracks_numpy, fit_tracks, seed_tracks)
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


def _padded_step(loc, res, w, track, nt, ws, theta):
    """The Gauss-Newton step as the fit formed it before the compiled pass: the padded (T, rows, nl) layout, the
    batched normal matrices, the kink priors, the scaling, np.linalg.solve and the helix block of the inverse."""
    starts = np.searchsorted(track, np.arange(nt))
    slot_in = np.arange(track.size) - starts[track]
    mmax, nl = int(slot_in.max()) + 1, loc.shape[1]
    sw = np.sqrt(w)
    padded = np.zeros((nt, mmax, nl))
    padded[track, slot_in] = loc * sw[:, None]
    rpad = np.zeros((nt, mmax))
    rpad[track, slot_in] = res * sw
    pt = np.swapaxes(padded, 1, 2)
    a = pt @ padded
    b = (pt @ rpad[..., None])[..., 0]
    chi2 = np.sum(rpad * rpad, axis=1) + np.sum(ws * theta * theta, axis=1)
    a[:, 5:, 5:] += ws[:, :, None] * np.eye(nl - 5)
    b[:, 5:] -= ws * theta
    diag = np.diagonal(a, axis1=1, axis2=2)
    scale = np.where(diag > 0, 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0)), 1.0)
    a_s = a * scale[:, :, None] * scale[:, None, :] + np.eye(nl) * np.where(diag > 0, 1e-12, 1.0)[:, None, :]
    step = np.linalg.solve(a_s, (b * scale)[..., None])[..., 0]
    return step, scale, chi2, _helix_covariance(a_s, scale, np.eye(nl))


@pytest.mark.parametrize("n_arms", [0, 1, 2])
def test_normal_steps_equal_the_padded_numpy_step(n_arms):
    """The compiled per-track normal equations (from the 5x5 sums of the rows after each scatterer) against the
    padded numpy formulation with the full local derivatives (kink columns of :func:`kink_columns`): rows left out
    (weight 0), scatterers the track does not reach (zero Jacobians) and a track without rows in one arm."""
    rng = np.random.default_rng(11)
    nt, n_scat = 60, 8
    n_rows = rng.integers(15, 60, nt)
    track = np.repeat(np.arange(nt), n_rows)
    r = track.size
    d = rng.normal(size=(r, 5)) * np.array([1.0, 100.0, 1e4, 1.0, 50.0])
    res = rng.normal(size=r)
    w = rng.uniform(0.5, 4.0, r) * (rng.uniform(size=r) > 0.1)
    d[w == 0] = 0.0
    res[w == 0] = 0.0
    n_before = rng.integers(0, n_scat + 1, r)
    slot = (rng.integers(0, 2, r) if n_arms == 2 else np.zeros(r, np.int64)).astype(np.int64)
    slot[track == 3] = 0  # no rows in the second arm: its kinks are fixed by their priors alone
    jk = rng.normal(size=(nt, n_arms, n_scat, 5, 2)) * 10.0
    jk[:, :, -2:] = 0.0  # the last scatterers are not reached
    nk = 2 * n_arms * n_scat
    ws = rng.uniform(1e5, 1e7, (nt, nk))  # kink widths of 0.3 to 3 mrad
    theta = rng.normal(size=(nt, nk)) * 1e-3
    loc = np.zeros((r, 5 + nk))
    loc[:, :5] = d
    if n_arms:
        j2 = np.ascontiguousarray(jk.transpose(0, 1, 3, 2, 4)).reshape(-1, 5, 2 * n_scat)
        K.kink_columns(d, j2, track * n_arms + slot, n_before, slot, loc)
    want = _padded_step(loc, res, w, track, nt, ws, theta)
    step, scale, chi2 = np.empty((nt, 5 + nk)), np.empty((nt, 5 + nk)), np.empty(nt)
    cov = np.full((nt, 5, 5), np.nan)
    bounds = np.append(np.searchsorted(track, np.arange(nt)), r)
    K.normal_steps(d, res, w, bounds, n_before, slot, jk, ws, theta, True, np.zeros(nt, bool), step, scale, chi2, cov)
    np.testing.assert_allclose(scale, want[1], rtol=1e-12)
    np.testing.assert_allclose(chi2, want[2], rtol=1e-12)
    np.testing.assert_allclose(step, want[0], rtol=1e-8, atol=1e-10 * np.abs(want[0]).max())
    np.testing.assert_allclose(cov, want[3], rtol=1e-8, atol=1e-10 * np.abs(want[3]).max())
    # without want_cov: the covariance of the tracks that may stop (done, or a step below 1e-3) only
    done = np.zeros(nt, bool)
    done[[2, 5]] = True
    cov2 = np.full((nt, 5, 5), np.nan)
    K.normal_steps(d, res, w, bounds, n_before, slot, jk, ws, theta, False, done, step, scale, chi2, cov2)
    small = np.max(np.abs(step), axis=1) < 1e-3
    assert np.array_equal(np.isfinite(cov2[:, 0, 0]), done | small)
    assert np.array_equal(cov2[done | small], cov[done | small])


def test_solve_scaled_cholesky_and_its_fallback():
    rng = np.random.default_rng(3)
    m = rng.normal(size=(7, 7))
    spd = m @ m.T + np.eye(7)
    rhs = rng.normal(size=(7, 2))
    x, fac = rhs.copy(), np.empty((7, 7))
    assert K.solve_scaled(spd, x, fac)
    np.testing.assert_allclose(x, np.linalg.solve(spd, rhs), rtol=1e-10)
    indefinite = spd - 5.0 * np.eye(7) * np.abs(np.linalg.eigvalsh(spd)).max()
    x = rhs.copy()
    assert not K.solve_scaled(indefinite, x, fac)  # a pivot <= 0: Gaussian elimination
    np.testing.assert_allclose(x, np.linalg.solve(indefinite, rhs), rtol=1e-10)
    x = rhs.copy()
    nan = spd.copy()
    nan[3, 3] = np.nan
    assert not K.solve_scaled(nan, x, fac) and np.all(np.isnan(x))


def test_compiled_kink_jacobians_and_seeds_equal_the_numpy_ones(sample):
    c, all_meas = sample
    for tag, arms in (("cosmic_calib", (1.0, -1.0)), ("hadron_calib", (1.0,))):
        meas = all_meas[tag]
        h, arm = seed_tracks(meas, GEOM, c)
        h_np, arm_np = _seed_tracks_numpy(meas, GEOM, c)
        assert np.array_equal(arm, arm_np)
        assert np.all(np.isfinite(h))
        np.testing.assert_allclose(h, h_np, rtol=1e-9, atol=1e-9)
        h = np.vstack([h, [[0.0, 0.3, 1.0 / 40.0, 0.0, 0.1]]])  # radius 40 mm: the outer scatterers not reached
        p = H.momentum(h)
        mass = np.full(h.shape[0], 0.13957)
        jac, sig = _kink_jacobians(h, arms, GEOM, p, mass)
        jac_np, sig_np = _kink_jacobians_numpy(h, arms, GEOM, p, mass)
        reached = np.any(jac != 0, axis=(3, 4))
        assert np.array_equal(reached, np.any(jac_np != 0, axis=(3, 4)))  # the same scatterers reached
        assert np.array_equal(sig == 1.0, ~reached) and not np.all(reached[-1]) and np.any(reached[-1])
        np.testing.assert_allclose(sig, sig_np, rtol=1e-12)
        # central differences (steps 1e-6): round-off of the helices' parameters over 2e-6 (the entries that are 0
        # analytically, d(omega)/d(t1) and d(tanl)/d(t1), are such round-off: ~1e-10)
        scale = np.abs(jac_np).max(axis=(0, 1, 2))
        assert np.all(np.abs(jac - jac_np) <= 1e-6 * scale + 1e-9)
        wrong = jac.copy()
        wrong[..., 3, 1] *= 1 + 1e-5  # a wrong derivative is seen
        assert not np.all(np.abs(wrong - jac_np) <= 1e-6 * scale + 1e-9)


def test_kinked_rows_add_the_kinks_before_the_hit():
    rng = np.random.default_rng(8)
    nt, n_arms, n_scat = 30, 2, 8
    track = np.repeat(np.arange(nt), rng.integers(1, 20, nt))
    n_before = rng.integers(0, n_scat + 1, track.size)
    slot = rng.integers(0, n_arms, track.size)
    h = rng.normal(size=(nt, 5))
    jk = rng.normal(size=(nt, n_arms, n_scat, 5, 2))
    theta = rng.normal(size=(nt, n_arms, n_scat, 2)) * 1e-3
    out = np.empty((track.size, 5))
    K.kinked_rows(h, np.append(np.searchsorted(track, np.arange(nt)), track.size), n_before, slot, jk, theta, out)
    dh = np.einsum("tajkc,tajc->tajk", jk, theta)
    before = np.arange(n_scat)[None, :] < n_before[:, None]  # (R, N)
    expected = h[track] + np.einsum("rjk,rj->rk", dh[track, slot], before)
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-15)
    assert not np.allclose(out, h[track])
