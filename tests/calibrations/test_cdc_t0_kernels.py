"""CDCTimeZeros' compiled kernels: log Phi in both tails, the per-iteration sums and the whole fit against the numpy
reference (``fit_t0(..., compiled=False)``)."""

from __future__ import annotations

import numpy as np
import pytest


def test_log_ndtr_matches_scipy_and_high_precision():
    from scipy.special import log_ndtr as scipy_log_ndtr

    from calibrations._cdc_t0_kernels import log_ndtr

    x = np.concatenate([np.linspace(-40.0, 40.0, 40001), [-20.0, np.nextafter(-20.0, 0), np.nextafter(-20.0, -30),
                                                         0.0, -0.0, 1e-300, -1e-300, 8.0, 38.4]])
    ours = np.array([log_ndtr(float(v)) for v in x])
    ref = scipy_log_ndtr(x)
    # scipy's own ndtr loses digits in the far right tail (erfc of cephes, ~1e-11 at x = 37): compared up to 10
    near = x <= 10.0
    np.testing.assert_allclose(ours[near], ref[near], rtol=2e-14, atol=0)
    grid = ours[:40001][x[:40001] < 37.0]  # beyond, log Phi = -Phi(-x) underflows to 0
    assert np.all(ours <= 0) and np.all(np.diff(grid) > 0)  # log of a CDF: negative and increasing
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    far = np.linspace(10.0, 37.0, 300)  # beyond, Phi(-x) is a subnormal number
    exact = np.array([float(mpmath.log1p(-mpmath.ncdf(-v))) for v in far])
    # there Phi(-x) ~ exp(-x^2/2): x^2 eps / 2 of relative error is inherent to double (scipy: up to 6e-11)
    np.testing.assert_allclose([log_ndtr(float(v)) for v in far], exact, rtol=5e-13, atol=0)
    left = np.linspace(-40.0, -5.0, 300)
    exact = np.array([float(mpmath.log(mpmath.ncdf(v))) for v in left])
    np.testing.assert_allclose([log_ndtr(float(v)) for v in left], exact, rtol=2e-15, atol=0)


def test_hit_terms_match_numpy_terms_on_a_fine_grid(script):
    """Each branch of the compiled terms (both edges, both tails, the middle of the cell where log F is dropped)
    against :func:`_terms` hit by hit."""
    from calibrations._cdc_t0_kernels import _hit

    cal = script("cdc_time_zeros")
    for half, sigma in ((0.6, 0.15), (2.0, 0.11), (7.5, 0.11), (9.0, 0.3)):
        x = np.linspace(-8 * sigma, half + 8 * sigma, 20001)
        ref = np.array(cal._terms(x, np.full(x.size, half), sigma)[1:])
        ours = np.array([_hit(float(v), half, sigma) for v in x]).T
        for r, o in zip(ref, ours):
            np.testing.assert_allclose(o, r, rtol=1e-12, atol=1e-14 * np.abs(r).max())
        middle = (x / sigma >= 8) & ((x - half) / sigma <= -8)
        assert middle.any() == (half > 16 * sigma)


def _hits(rng, n=60000, nb=300):
    from b2luca.reco.geometry import CDC_DRIFT_VELOCITY as V
    from b2luca.reco.geometry import nominal_geometry

    geom = nominal_geometry()
    nb = min(nb, geom.n_cdc_boards)
    board = rng.integers(0, nb, n)
    layer = rng.integers(0, geom.n_cdc_layers, n)
    half = geom.cdc_r[layer] * np.sin(np.pi / geom.cdc_nwires[layer])
    t0_true = rng.normal(0.0, 3.0, geom.n_cdc_boards)
    d = rng.uniform(0, 1, n) * half + rng.normal(0, 0.11, n)
    tdc = t0_true[board] + d / V
    tdc[:200] += rng.uniform(-50, 300, 200)  # a few hits far outside the window of their board
    return board, layer, tdc, t0_true, half, V


def test_accumulate_matches_numpy_terms(script):
    from calibrations._cdc_t0_kernels import accumulate

    cal = script("cdc_time_zeros")
    rng = np.random.default_rng(11)
    board, _layer, tdc, t0_true, half, v = _hits(rng)
    nb = t0_true.size
    t0 = t0_true + rng.normal(0, 1.0, nb)  # away from the optimum: non-zero gradients
    for sigma in (0.08, 0.15, 0.3):
        g_ref, h_ref, s1_ref, dss_ref = cal._sums_numpy(board, tdc, half, t0, sigma, v, nb)
        grad, hess = np.full(nb, 7.0), np.full(nb, 7.0)  # stale contents must be overwritten
        s1, dss = accumulate(board, tdc, half, t0, sigma, v, grad, hess)
        scale_g, scale_h = np.abs(g_ref).max(), np.abs(h_ref).max()
        np.testing.assert_allclose(grad, g_ref, rtol=1e-12, atol=1e-12 * scale_g)
        np.testing.assert_allclose(hess, h_ref, rtol=1e-12, atol=1e-12 * scale_h)
        assert s1 == pytest.approx(s1_ref, rel=1e-11, abs=1e-12 * np.abs(g_ref).sum())
        assert dss == pytest.approx(dss_ref, rel=1e-11)
    # the window: a hit far outside contributes nothing
    one = np.zeros(nb)
    accumulate(board[:1], tdc[:1] + 1e4, half[:1], t0, 0.1, v, one, one.copy())
    assert not one.any()


def test_compiled_fit_equals_numpy_reference(script):
    cal = script("cdc_time_zeros")
    rng = np.random.default_rng(5)
    board, layer, tdc, t0_true, _half, _v = _hits(rng, n=120000, nb=200)
    prev = np.zeros(t0_true.size)
    ref = cal.fit_t0(board, layer, tdc, prev, 100, compiled=False)
    res = cal.fit_t0(board, layer, tdc, prev, 100)
    ok = np.isfinite(ref["t0_error"])
    assert ok.sum() == 200
    np.testing.assert_array_equal(np.isfinite(res["t0_error"]), ok)
    assert np.max(np.abs(res["t0"] - ref["t0"])[ok] / ref["t0_error"][ok]) < 1e-8
    np.testing.assert_allclose(res["t0_error"][ok], ref["t0_error"][ok], rtol=1e-9)
    assert res["sigma_mm"][0] == pytest.approx(ref["sigma_mm"][0], rel=1e-9)
    np.testing.assert_array_equal(res["t0"][~ok], prev[~ok])
    # and it is a fit: the truth within the errors
    pulls = (res["t0"] - t0_true)[ok] / res["t0_error"][ok]
    assert abs(pulls.mean()) < 5 / np.sqrt(ok.sum()) and abs(pulls.std() - 1) < 5 / np.sqrt(2 * ok.sum())


def test_a_kernel_that_cannot_be_loaded_is_a_clear_error(script, monkeypatch):
    import sys

    from b2luca.errors import KernelLoadError
    from b2luca.reco.geometry import nominal_geometry

    cal = script("cdc_time_zeros")
    nb = nominal_geometry().n_cdc_boards
    monkeypatch.setitem(sys.modules, "calibrations._cdc_t0_kernels", None)  # the import raises ImportError
    with pytest.raises(KernelLoadError, match=r"CDCTimeZeros: its compiled kernels \(calibrations._cdc_t0_kernels.*NUMBA_CACHE_DIR"):
        cal.fit_t0(np.array([0]), np.array([0]), np.array([1.0]), np.zeros(nb), 10)
    ref = cal.fit_t0(np.array([0]), np.array([0]), np.array([1.0]), np.zeros(nb), 10, compiled=False)
    assert np.isnan(ref["t0_error"]).all()  # the numpy path needs no kernel
