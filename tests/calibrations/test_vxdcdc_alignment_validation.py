"""The VXDCDCAlignment validation can fail: synthetic fitted-vs-true inputs (no track fit, no alignment run)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import weak_modes as W
from b2luca.alignment.frame import truth_in_frame
from b2luca.reco.geometry import nominal_geometry
from b2luca.sim.truth import make_truth

G = nominal_geometry()
E_VXD = np.tile([0.003, 0.006, 0.010, 1e-4, 2e-4, 1e-4], (G.n_sensors, 1))
E_CDC = np.tile([0.005, 0.005, 1e-5], (G.n_cdc_layers, 1))


@pytest.fixture(scope="module")
def val():
    from calibrations.validations import vxdcdc_alignment

    return vxdcdc_alignment


@pytest.fixture(scope="module")
def truth():
    return make_truth(5, G)


def _fitted(truth, seed=2, weak=None, scale=1.0, frame_shift_um=0.0):
    """A perfect alignment: the truth in the frame, smeared by its stated errors (times ``scale``)."""
    _fr = truth_in_frame(truth.vxd_params, truth.cdc_params, geom=G)
    tv, tc = _fr.vxd, _fr.cdc
    rng = np.random.default_rng(seed)
    fv = tv + rng.normal(0, scale * E_VXD)
    fc = tc + rng.normal(0, scale * E_CDC)
    if weak:
        dv, dc = W.distortion(weak, G)
        fv, fc = fv + dv, fc + dc
    if frame_shift_um:  # the whole tracking system moved: not the frame the truth is expressed in
        dv, dc = W.distortion({"vxd_ty_um": frame_shift_um, "cdc_ty_um": frame_shift_um}, G)
        fv, fc = fv + dv, fc + dc
    return fv, fc


def _check(val, truth, fitted, **kw):
    fv, fc = fitted
    return val.truth_checks(fv, E_VXD, fc, E_CDC, truth.vxd_params, truth.cdc_params, geom=G,
                            before=(np.zeros_like(fv), np.zeros_like(fc)), **kw)


@pytest.mark.parametrize("seed", [2, 3])
def test_true_constants_with_their_errors_pass(val, truth, seed):
    res = _check(val, truth, _fitted(truth, seed))
    assert not res.reasons, res.reasons
    assert abs(res.figures["vxd_du_pull_width"] - 1) < 0.15
    # the truth's own radial expansion / twist (make_truth) shows up before the alignment
    assert abs(res.figures["weak_vxd_radial_expansion_um_before"]) > 10


def test_left_in_weak_mode_fails(val, truth):
    # the example: a 20 um radial expansion of the VXD and a CDC twist left in the result
    res = _check(val, truth, _fitted(truth, weak={"vxd_radial_expansion_um": 20.0, "cdc_twist_urad": 50.0}))
    text = "; ".join(res.reasons)
    assert "weak mode vxd_radial_expansion_um" in text and "weak mode cdc_twist_urad" in text
    assert res.figures["weak_vxd_radial_expansion_um"] == pytest.approx(20.0, abs=3 * 1.3)


def test_false_alarm_rate(val, truth):
    """Perfect results fail only by chance: 20 modes at 3 sigma and 12 pull checks at 3 sigma: 4.7 % in 300 tries."""
    fails = sum(bool(_check(val, truth, _fitted(truth, seed)).reasons) for seed in range(100, 140))
    assert fails <= 8


@pytest.mark.parametrize("mode", ["vxd_twist_urad", "vxd_elliptical_um"])
def test_small_weak_mode_caught_by_its_projection_alone(val, truth, mode):
    """A weak mode of 6 of its errors: every pull check passes, the weak-mode check fails."""
    err = _check(val, truth, _fitted(truth)).figures[f"weak_{mode}_error"]
    res = _check(val, truth, _fitted(truth, weak={mode: 6 * err}))
    assert res.reasons and all(r.startswith(f"weak mode {mode}") for r in res.reasons), res.reasons


def test_wrong_frame_fails(val, truth):
    res = _check(val, truth, _fitted(truth, frame_shift_um=15.0))
    assert any("weak mode vxd_ty_um" in r for r in res.reasons)


@pytest.mark.parametrize("scale, word", [(2.0, "above"), (0.5, "below")])
def test_errors_that_do_not_describe_the_result_fail(val, truth, scale, word):
    res = _check(val, truth, _fitted(truth, scale=scale))
    assert any("pull width" in r for r in res.reasons), res.reasons


def test_exact_truth_with_nonzero_errors_fails_the_width(val, truth):
    """Feeding the exact truth with finite errors: all pulls 0 -- the errors overstate the scatter."""
    _fr = truth_in_frame(truth.vxd_params, truth.cdc_params, geom=G)
    tv, tc = _fr.vxd, _fr.cdc
    res = val.truth_checks(tv, E_VXD, tc, E_CDC, truth.vxd_params, truth.cdc_params, geom=G)
    assert any("pull width 0.00" in r for r in res.reasons)
    assert not any(r.startswith("weak mode") for r in res.reasons)


# --- data-only checks on synthetic track samples ----------------------------------------------------
def _sample(val, rng, pair_offsets_um=0.0, d0_bias_um=0.0, sigma_i=0.015, n_events=400):
    pairs = np.repeat(np.arange(20), 12)
    offs = 1e-3 * pair_offsets_um * rng.standard_normal(20)
    diff = offs[pairs] + rng.normal(0, 0.020, pairs.size)
    phi = rng.uniform(-np.pi, np.pi, n_events)
    beam = np.array([0.4, -0.05])
    vx = beam[0] + rng.normal(0, 0.010, n_events)
    vy = beam[1] + rng.normal(0, 0.0002, n_events)
    phis = np.stack([phi, phi + np.pi], axis=1)
    # a misalignment: a phi-dependent d0 bias that does not cancel in d0_1 + d0_2 (a pure vertex shift would)
    bias = 1e-3 * d0_bias_um * np.cos(2 * phis)
    d0 = vx[:, None] * np.sin(phis) - vy[:, None] * np.cos(phis) + bias + rng.normal(0, sigma_i, (n_events, 2))
    return val.TrackSample(chi2_ndf=rng.chisquare(20, 500) / 20, overlap_pair=pairs, overlap_diff=diff,
                           d0_sum=d0.sum(axis=1), d0_sum_phi=phis[:, 0], d0=d0.ravel(),
                           d0_phi=np.mod(phis.ravel() + np.pi, 2 * np.pi) - np.pi)


def test_data_checks_pass_for_a_good_alignment_and_measure_the_beam(val):
    rng = np.random.default_rng(3)
    before = _sample(val, rng, pair_offsets_um=40.0, d0_bias_um=60.0, sigma_i=0.025)
    after = _sample(val, rng)
    res = val.data_checks(before, after)
    assert not res.reasons, res.reasons
    f = res.figures
    assert f["d0_sigma_i_um_after"] == pytest.approx(15.0, abs=3 * f["d0_sigma_i_err_um_after"])
    assert f["d0_beam_x_um_after"] == pytest.approx(400.0, abs=5.0)
    assert f["d0_sigma_x_um_after"] == pytest.approx(10.0, abs=6.0)
    assert f["overlap_rms_um_after"] < f["overlap_rms_um_before"]


def test_data_checks_fail_for_misaligned_overlaps_and_d0_bias(val):
    rng = np.random.default_rng(4)
    good = _sample(val, rng)
    res = val.data_checks(good, _sample(val, rng, pair_offsets_um=40.0))
    assert any(r.startswith("overlap residuals: pair means") for r in res.reasons), res.reasons
    res = val.data_checks(good, _sample(val, rng, d0_bias_um=30.0))
    assert any(r.startswith("d0_1 + d0_2 vs phi0") for r in res.reasons), res.reasons
    res = val.data_checks(good, _sample(val, rng, sigma_i=0.030))
    assert any(r.startswith("d0 resolution got worse") for r in res.reasons), res.reasons


def test_loads_the_way_the_native_runner_loads_it():
    """The native runner executes the file outside sys.modules (dataclasses with string annotations broke)."""
    from pathlib import Path

    from b2luca.runners.native_job import load_script

    module = load_script(Path(__file__).resolve().parents[2] / "calibrations" / "validations" / "vxdcdc_alignment.py")
    assert module.CheckResult().reasons == [] and callable(module.run_validation)


# --- overlap check with the alignment's own uncertainty ---------------------------------------------
def _overlap_sample(val, rng, err_um=6.0, extra_um=0.0, n=100, n_pairs=40):
    """Pair means = J delta + noise, delta ~ N(0, err^2) the alignment's error (du, gamma of each sensor);
    ``extra_um``: a shift beyond the errors of the first sensor of pairs 0..7 (one ladder, whose sensors overlap
    those of its neighbour)."""
    n_par = 6 * 2 * n_pairs
    var = np.zeros(n_par)
    var[0::6] = (1e-3 * err_um) ** 2  # du
    var[5::6] = (1e-3 * err_um / 20.0) ** 2  # gamma [rad], lever arm ~ +-20 mm in v
    delta = rng.normal(0.0, np.sqrt(var))
    delta[0:6 * 16:12] += 1e-3 * extra_um
    sa = 2 * np.repeat(np.arange(n_pairs), n)
    sb = sa + 1
    v = rng.uniform(-20.0, 20.0, sa.size)
    g = np.zeros((sa.size, 6))
    g[:, 0], g[:, 5] = -1.0, v  # d(prediction u)/d(du, gamma)
    deriv = np.concatenate([-g, g], axis=1)  # d(res_a - res_b)/d(params a, params b)
    pa = 6 * sa[:, None] + np.arange(6)
    pb = 6 * sb[:, None] + np.arange(6)
    diff = np.sum(deriv[:, :6] * delta[pa], axis=1) + np.sum(deriv[:, 6:] * delta[pb], axis=1)
    diff += rng.normal(0.0, 0.020, sa.size)
    pairs = (sa.astype(np.int64) * 1000 + sb) * 10
    base = _sample(val, rng)
    return (val.TrackSample(chi2_ndf=base.chi2_ndf, overlap_pair=pairs, overlap_diff=diff, d0_sum=base.d0_sum,
                            d0_sum_phi=base.d0_sum_phi, d0=base.d0, d0_phi=base.d0_phi, overlap_deriv=deriv), var)


def test_overlap_check_includes_the_alignment_uncertainty(val):
    rng = np.random.default_rng(7)
    s, var = _overlap_sample(val, rng)
    stat_only = val.overlap_figures(s)
    assert stat_only["pair_chi2"] / stat_only["pair_ndf"] > 3.0  # the sample errors alone do not describe it
    for cov in (var, np.diag(var)):  # variances or the full covariance
        f = val.overlap_figures(s, cov=cov)
        assert f["pair_chi2"] / f["pair_ndf"] < 1.0 + 3.0 * np.sqrt(2.0 / f["pair_ndf"])
        assert f["align_err_um_median"] == pytest.approx(np.sqrt(2) * 6.0 * np.sqrt(1 + 133.0 / 400), rel=0.3)
    res = val.data_checks(_sample(val, rng, pair_offsets_um=40.0), s, cov_after=var)
    assert not any(r.startswith("overlap residuals: pair means") for r in res.reasons), res.reasons
    assert res.figures["overlap_pair_chi2_ndf_after_stat_only"] > 3.0


def test_overlap_check_fails_for_an_alignment_off_beyond_its_errors(val):
    rng = np.random.default_rng(8)
    s, var = _overlap_sample(val, rng, err_um=3.0, extra_um=20.0)  # one ladder 20 um off, errors 3 um
    res = val.data_checks(_sample(val, rng, pair_offsets_um=40.0), s, cov_after=var)
    assert any(r.startswith("overlap residuals: pair means") for r in res.reasons), res.reasons


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_overlap_check_with_few_hits_per_pair_passes_for_aligned_sensors(val, seed):
    """3-5 hits per pair (as in the demo): the pooled variance keeps chi2/ndf ~1 (the pairs' own sample
    variances gave a heavy-tailed Student t, chi2/ndf ~4 with the true constants)."""
    rng = np.random.default_rng(seed)
    n = rng.integers(3, 6, 90)
    sa = np.repeat(2 * np.arange(90), n)
    pairs = (sa.astype(np.int64) * 1000 + sa + 1) * 10
    diff = rng.normal(0.0, 0.020, sa.size)
    f = val.overlap_figures(val.TrackSample(chi2_ndf=np.ones(5), overlap_pair=pairs, overlap_diff=diff,
                                            d0_sum=np.zeros(0), d0_sum_phi=np.zeros(0), d0=np.zeros(0),
                                            d0_phi=np.zeros(0)))
    assert f["pair_ndf"] == 90
    assert f["pair_chi2"] / f["pair_ndf"] < 1.0 + 3.0 * np.sqrt(2.0 / 90)


def test_family_k_sidak(val):
    """k per check such that the whole family of checks of a correct result fails with the stated probability."""
    from scipy.stats import norm

    k = val.family_k(37, 0.003)
    assert k == pytest.approx(3.94, abs=0.01)
    assert 1 - (1 - 2 * norm.sf(k)) ** 37 == pytest.approx(0.003, rel=1e-6)
    assert val.family_k(1, 0.0027) == pytest.approx(3.0, abs=1e-3)


def test_family_k_keeps_perfect_results_passing_and_wrong_ones_failing(val, truth):
    k = val.family_k(2 * len(val.PULL_GROUPS) + len(W.MODE_NAMES), 0.003)
    fails = sum(bool(_check(val, truth, _fitted(truth, seed), k=k, k_weak=k).reasons) for seed in range(100, 140))
    assert fails <= 1
    for fitted in (_fitted(truth, scale=1.5), _fitted(truth, weak={"vxd_radial_expansion_um": 20.0})):
        assert _check(val, truth, fitted, k=k, k_weak=k).reasons


def test_pull_group_with_too_few_parameters_says_not_enough_data(val, truth):
    fv, fc = _fitted(truth)
    e_cdc = E_CDC.copy()
    e_cdc[5:, 2] = np.nan  # only 5 CDC layers with a dphi error
    res = val.truth_checks(fv, E_VXD, fc, e_cdc, truth.vxd_params, truth.cdc_params, geom=G)
    assert res.figures["cdc_dphi_note"].startswith("not enough data: 5 parameters")
    assert not any(r.startswith("cdc_dphi") for r in res.reasons)
    fc_bad = fc.copy()
    fc_bad[:5, 2] += 10 * E_CDC[:5, 2]  # even wrong: no verdict from 5 pulls; the other checks still run
    res = val.truth_checks(fv, E_VXD, fc_bad, e_cdc, truth.vxd_params, truth.cdc_params, geom=G)
    assert not any(r.startswith("cdc_dphi") for r in res.reasons) and "vxd_du_pull_width" in res.figures


# --- precision requirement: the largest acceptable error of each mode amplitude -----------------------------
def test_mode_families_cover_every_mode_once(val):
    listed = [m for modes in val.MODE_FAMILIES.values() for m in modes]
    assert sorted(listed) == sorted(W.MODE_NAMES)
    assert set(val.settings.expert_config["max_weak_mode_error"]) == set(val.MODE_FAMILIES)


def test_mode_requirements_family_and_mode_overrides(val):
    default = val.mode_requirements()
    fam = val.settings.expert_config["max_weak_mode_error"]
    assert default["cdc_tz_um"] == fam["cdc_translation_um"] and default["vxd_twist_urad"] == fam["vxd_weak_urad"]
    req = val.mode_requirements({"cdc_translation_um": 40, "cdc_tz_um": 90.0})
    assert req["cdc_tx_um"] == 40.0 and req["cdc_tz_um"] == 90.0 and req["vxd_tx_um"] == default["vxd_tx_um"]
    with pytest.raises(ValueError) as err:  # every problem in one message
        val.mode_requirements({"cdc_banana_um": 1.0, "vxd_weak_um": -2.0, "cdc_twist_urad": "wide"})
    text = str(err.value)
    assert "max_weak_mode_error.cdc_banana_um: not a mode family" in text
    assert "max_weak_mode_error.vxd_weak_um: expected a positive number" in text and "cdc_twist_urad" in text


@pytest.mark.parametrize("factor, fails", [(0.98, False), (1.02, True)])
def test_precision_check_just_below_and_above_the_requirement(val, factor, fails):
    req = val.mode_requirements()
    errors = {name: 0.5 * r for name, r in req.items()}
    errors["cdc_tx_um"] = factor * req["cdc_tx_um"]
    res = val.precision_checks(errors, req, {"cosmic_calib": 0, "mumu_tight_or_highm_calib": 3000})
    assert res.figures["weak_cdc_tx_um_max_error"] == req["cdc_tx_um"]
    assert res.figures["weak_cdc_tx_um_error"] == pytest.approx(factor * req["cdc_tx_um"])
    assert res.figures["weak_modes_above_max_error"] == float(fails)
    if not fails:
        assert not res.reasons
        return
    [reason] = res.reasons
    assert reason.startswith(f"weak modes known less precisely than required (cdc_tx_um error "
                             f"{factor * req['cdc_tx_um']:.3g} um > required {req['cdc_tx_um']:g} um): the track-sample "
                             f"mix does not pin them")
    assert "cosmic_calib 0" in reason and "add cosmics" in reason


def test_precision_check_fails_an_unpinned_mode_and_skips_undetermined_ones(val):
    req = val.mode_requirements()
    res = val.precision_checks({"vxd_telescope_um": float("nan")}, req, {"cosmic_calib": 500})
    assert len(res.reasons) == 1 and "(vxd_telescope_um error undefined (nothing fixes it) > required" in res.reasons[0]
    assert "add cosmics" not in res.reasons[0]  # cosmics were used: more tracks of the pinning samples
    # a mode the parameters do not determine has no error: "not enough data" (truth_checks), no precision verdict
    assert "weak_vxd_tx_um_error" not in res.figures


def test_mode_errors_are_the_truth_checks_errors(val, truth):
    """The precision check needs no truth, and its errors are the ones the weak-mode check uses."""
    res = _check(val, truth, _fitted(truth))
    errors = val.mode_errors(E_VXD, E_CDC, None, G)
    assert set(errors) == set(W.MODE_NAMES)
    for name, e in errors.items():
        assert e == pytest.approx(res.figures[f"weak_{name}_error"], rel=1e-9)
    e_cdc = E_CDC.copy()
    e_cdc[:, 2] = np.nan  # no CDC dphi fitted: the modes living in dphi are not determined, so not checked
    assert not {"cdc_rz_urad", "cdc_twist_urad", "cdc_tz_um"} & set(val.mode_errors(E_VXD, e_cdc, None, G))


def test_requirement_is_settable_in_the_bucket_yaml(val):
    """The validation reads the calibration's expert_config: the calibration declares the key (empty: the
    validation's defaults), so a bucket YAML may loosen or tighten a family under VXDCDCAlignment."""
    import calibrations.vxdcdc_alignment as cal
    from b2luca.config_checks import expert_config_problems

    block = {"VXDCDCAlignment": {"max_weak_mode_error": {"cdc_weak_um": 60.0}}}
    assert expert_config_problems("bucket.yaml", block, {"VXDCDCAlignment": cal.settings.expert_config}) == []
    merged = {**val.settings.expert_config, **cal.settings.expert_config}  # what run_validation sees by default
    assert val.mode_requirements(merged["max_weak_mode_error"]) == val.mode_requirements()
