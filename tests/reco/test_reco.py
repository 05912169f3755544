"""Tests of the reconstruction library: constants from the conditions DB, measurements, track fit."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.conditions import DatabaseChain, GlobalTag
from b2luca.iov import ExpRun, IoV
from b2luca.reco.fit import fit_tracks, predict
from b2luca.reco.geometry import nominal_geometry
from b2luca.reco.measurements import build_measurements, cdc_drift_time, ecl_energy, load_constants, svd_time
from b2luca.reco.raw import RawDataError, read_raw, write_raw
from b2luca.sim import make_truth, simulate_sample
from b2luca.sim.generate import SVD_TIME_SIGMA
from b2luca.sim.truth import nominal_payloads, truth_payloads

GEOM = nominal_geometry()
ER = ExpRun(26, 1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reco")
    truth = make_truth(99, GEOM)
    nominal, tt = GlobalTag.create(tmp, "nominal_x"), GlobalTag.create(tmp, "truth_x")
    for name, data in nominal_payloads(GEOM).items():
        nominal.store(name, data, IoV(0, 0, -1, -1))
    for name, data in truth_payloads(truth, GEOM).items():
        tt.store(name, data, IoV(26, 1, 26, 8))
    res = simulate_sample("mumu_tight_or_highm_calib", 500, np.random.default_rng(3), truth, GEOM, experiment=26, run=1)
    write_raw(tmp / "data" / "raw_0.root", res.raw)
    raw = read_raw(tmp / "data")
    c_true = load_constants(DatabaseChain([tt.db, nominal.db]), ER, GEOM)
    c_nom = load_constants(DatabaseChain([nominal.db]), ER, GEOM)
    return dict(truth=truth, res=res, raw=raw, c_true=c_true, c_nom=c_nom, tmp=tmp)


@pytest.fixture(scope="module")
def fits(setup):
    out = {}
    for key in ("c_true", "c_nom"):
        meas = build_measurements(setup["raw"], setup[key], GEOM)
        out[key] = fit_tracks(meas, setup[key], GEOM)
    return out


def _true_params(setup, fr):
    tracks = setup["res"].tracks
    first = np.searchsorted(tracks.event, tracks.event)
    key = (tracks.event) * 65536 + (np.arange(len(tracks)) - first)
    fk = fr.meas.track_key[:, 0] * 65536 + fr.meas.track_key[:, 1]
    return tracks.h[np.searchsorted(key, fk)]


def test_fit_with_true_alignment_has_unit_pulls(setup, fits):
    fr = fits["c_true"]
    assert fr.meas.n_tracks > 900 and fr.ok.all()
    true = _true_params(setup, fr)
    d = fr.params - true
    d[:, 1] = np.arctan2(np.sin(d[:, 1]), np.cos(d[:, 1]))
    pull = d / np.sqrt(np.diagonal(fr.cov, axis1=1, axis2=2))
    n = pull.shape[0]
    assert np.all(np.abs(pull.mean(0)) < 5 / np.sqrt(n)), pull.mean(0)
    assert np.all(np.abs(pull.std(0) - 1) < 0.08), pull.std(0)
    chi2ndf = fr.chi2.sum() / fr.ndf.sum()
    assert abs(chi2ndf - 1) < 0.03
    # the fitted omega carries the charge: positive omega = positive charge, p ~ 4-7 GeV
    assert np.all(np.sign(fr.params[:, 2]) == np.sign(true[:, 2]))


def test_fit_with_nominal_geometry_is_visibly_worse(fits):
    good, bad = fits["c_true"], fits["c_nom"]
    assert bad.chi2.sum() / bad.ndf.sum() > 2.0 * good.chi2.sum() / good.ndf.sum()
    vxd = bad.meas.kind < 2
    assert np.nanstd(bad.pulls[vxd]) > 1.5 * np.nanstd(good.pulls[good.meas.kind < 2])


def test_fit_without_scattering_model_underestimates_errors(setup, fits):
    meas = fits["c_true"].meas
    fr = fit_tracks(meas, setup["c_true"], GEOM, scattering=False)
    assert fr.local_derivs.shape[1] == 5
    assert fr.chi2.sum() / fr.ndf.sum() > 1.05


def test_global_derivatives_match_finite_differences(setup):
    """Analytic alignment derivatives (at the current alignment = nominal here) vs finite differences."""
    c = setup["c_nom"]
    meas = build_measurements(setup["raw"], c, GEOM)
    fr = fit_tracks(meas, c, GEOM, scattering=False, n_iter=2)
    h_rows = fr.params[meas.track]
    base = predict(meas, c, h_rows, fr.arm, GEOM)
    assert np.allclose(base, fr.pred, atol=1e-9)
    vxd, cdc = meas.kind < 2, meas.kind == 2
    for k, eps in enumerate([1e-3, 1e-3, 1e-3, 1e-5, 1e-5, 1e-5]):
        shifted = c.__class__(**{**c.__dict__, "vxd_params": c.vxd_params.copy()})
        shifted.vxd_params[:, k] += eps
        num = (predict(meas, shifted, h_rows, fr.arm, GEOM) - base) / eps
        assert np.allclose(num[vxd], fr.global_derivs[vxd, k], atol=1e-4 * max(1, np.abs(num[vxd]).max())), k
        assert np.all(fr.global_labels[vxd, k] == GEOM.sensor_id[meas.sensor[vxd]] * 10 + k + 1)
    for k, eps in enumerate([1e-3, 1e-3, 1e-6]):
        shifted = c.__class__(**{**c.__dict__, "cdc_params": c.cdc_params.copy()})
        shifted.cdc_params[:, k] += eps
        num = (predict(meas, shifted, h_rows, fr.arm, GEOM) - base) / eps
        scale = max(1.0, np.abs(num[cdc]).max())
        assert np.allclose(num[cdc], fr.global_derivs[cdc, k], atol=1e-4 * scale), k
    assert np.all(fr.global_labels[cdc, 3:] == 0)


def test_local_derivatives_predict_parameter_changes(setup, fits):
    fr = fits["c_true"]
    meas = fr.meas
    h_rows = fr.params[meas.track]
    dh = np.array([1e-3, 1e-5, 1e-7, 1e-3, 1e-5])
    # without kinks applied, a change of the helix parameters moves the predictions by local_derivs[:, :5] @ dh
    fr0 = fit_tracks(meas, setup["c_true"], GEOM, scattering=False, n_iter=2)
    h0 = fr0.params[meas.track]
    moved = predict(meas, setup["c_true"], h0 + dh, fr0.arm, GEOM) - predict(meas, setup["c_true"], h0, fr0.arm, GEOM)
    assert np.allclose(moved, fr0.local_derivs @ dh, atol=1e-5)
    assert fr.local_derivs.shape[1] == 5 + 2 * 8 and h_rows.shape[1] == 5
    # kink priors: every collision track scatters in the beam pipe and the 6 VXD layers before its CDC hits
    pm = fr.pseudo_measurements()
    per_track = np.bincount(pm["track"], minlength=meas.n_tracks)
    assert np.median(per_track) == 2 * 8 and np.all(pm["sigma"] < 1e-2)
    # chi2 = sum of measurement and kink-prior terms
    chi2 = np.bincount(meas.track, np.nan_to_num(fr.pulls) ** 2, meas.n_tracks)
    chi2 += np.bincount(pm["track"], (pm["residual"] / pm["sigma"]) ** 2, meas.n_tracks)
    assert np.allclose(chi2, fr.chi2, rtol=1e-6)


def test_calibration_helpers_apply_constants(setup):
    raw, truth = setup["raw"], setup["truth"]
    t_true, t_nom = svd_time(raw["svd"], setup["c_true"]), svd_time(raw["svd"], setup["c_nom"])
    assert abs(t_true.mean()) < 5 * SVD_TIME_SIGMA / np.sqrt(t_true.size)
    assert abs(t_true.std() / SVD_TIME_SIGMA - 1) < 0.05
    assert t_nom.std() > 1.3 * SVD_TIME_SIGMA
    dt = cdc_drift_time(raw["cdc"], setup["c_true"]) - cdc_drift_time(raw["cdc"], setup["c_nom"])
    assert np.allclose(dt, -truth.cdc_t0[raw["cdc"]["board"]])
    res = setup["res"]
    e = ecl_energy(raw["ecl"], setup["c_true"])
    order = np.argsort(res.tracks.event[res.digits["ecl"]["track"]], kind="stable")
    assert np.allclose(e, res.digits["ecl"]["true_edep"][order], atol=6e-3)
    assert setup["c_true"].sources["VXDAlignment"].endswith(".root")


def test_read_raw_names_bad_file(tmp_path):
    bad = tmp_path / "raw_0.root"
    import uproot

    with uproot.recreate(bad) as f:
        f["event"] = {"event": np.arange(3)}
    with pytest.raises(RawDataError, match="raw_0.root"):
        read_raw([bad])


def test_read_raw_of_some_trees_equals_the_full_read(setup):
    """``read_raw(paths, trees)`` (issue 15: readers skip trees they do not use) gives those trees and ``event``,
    identical to the full read; an unknown tree name is an error naming it."""
    part = read_raw(setup["tmp"] / "data", ("cdc", "svd"))
    assert set(part) == {"event", "cdc", "svd"}
    for tree in part:
        for branch, values in part[tree].items():
            np.testing.assert_array_equal(values, setup["raw"][tree][branch])
    with pytest.raises(ValueError, match="unknown raw tree.*'cdcx'"):
        read_raw(setup["tmp"] / "data", ("cdcx",))


@pytest.mark.parametrize("tag,n,mass", [("cosmic_calib", 300, 0.1057), ("hadron_calib", 150, 0.1396)])
def test_cosmic_and_hadron_fits(setup, tag, n, mass):
    """Cosmics (one helix through both hemispheres, kinks on both arms) and low-momentum pions
    (multiple scattering dominates) fit with chi2/ndf ~ 1 and unbiased, unit-width parameter pulls."""
    truth = setup["truth"]
    res = simulate_sample(tag, n, np.random.default_rng(8), truth, GEOM)
    raw = {k: {**v, "gevent": v["event"] - 1} for k, v in res.raw.items()}
    meas = build_measurements(raw, setup["c_true"], GEOM)
    fr = fit_tracks(meas, setup["c_true"], GEOM, mass=mass)
    chi2ndf = fr.chi2 / fr.ndf
    good = fr.ok & (chi2ndf < 5)
    assert good.mean() > 0.98
    assert abs(np.median(chi2ndf) - 1) < 0.05
    true = _true_params({"res": res}, fr)
    d = fr.params - true
    d[:, 1] = np.arctan2(np.sin(d[:, 1]), np.cos(d[:, 1]))
    pull = (d / np.sqrt(np.diagonal(fr.cov, axis1=1, axis2=2)))[good]
    # robust width (the few non-Gaussian tails of large-angle scatters are not the point here)
    width = (np.percentile(pull, 84, axis=0) - np.percentile(pull, 16, axis=0)) / 2
    assert np.all(np.abs(width - 1) < 0.15), width
    assert np.all(np.abs(np.median(pull, axis=0)) < 0.2)
    if tag == "cosmic_calib":
        assert fr.kinks.shape[1] == 2 * 2 * 8  # two arms
        assert np.mean(np.sin(fr.params[:, 1]) < 0) > 0.99  # cosmics point downwards


def test_empty_input_gives_empty_fit():
    from b2luca.reco.measurements import Constants
    from b2luca.reco.raw import RAW_BRANCHES

    raw = {t: {**{b: np.zeros(0, dt) for b, dt in br.items()}, "gevent": np.zeros(0, np.int64)}
           for t, br in RAW_BRANCHES.items()}
    c = Constants.nominal(GEOM)
    meas = build_measurements(raw, c, GEOM)
    fr = fit_tracks(meas, c, GEOM)
    assert meas.n_tracks == 0 and fr.params.shape == (0, 5) and fr.local_derivs.shape == (0, 21)
