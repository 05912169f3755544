"""VXDCDCAlignment with the b2luca solver: residual misalignment against the truth, and the validation."""

from __future__ import annotations

import os

import numpy as np
import pytest

from b2luca.conditions import DatabaseChain, LocalDatabase, read_payload
from b2luca.iov import ExpRun, IoV

#: the tiny bucket (2 runs, 400 cosmics, 500 di-muons read) knows the CDC modes less well than the demo-sized
#: buckets the validation's defaults are set for (with cosmics: CDC tz 12.9 um, sagitta 51 um against 15 / 30):
#: looser requirements for those two families, set here explicitly; without cosmics the z translations, the VXD
#: telescope and the CDC twist still miss theirs by > 4x (VXD telescope 52 um against 8)
TINY_REQUIREMENT = {"max_weak_mode_error": {"cdc_translation_um": 25.0, "cdc_weak_um": 80.0}}


def _run(bucket, job_factory, script, tmp_path, **overrides):
    cal = script("vxdcdc_alignment")
    # the constants in force: this bucket's CDC T0s (upstream calibration) on top of the nominal tag
    t0db = LocalDatabase(tmp_path / "t0").create()
    t0db.store("CDCTimeZeros", bucket.truth.read("CDCTimeZeros", ExpRun(26, 1)), IoV(0, 0, -1, -1))
    chain = DatabaseChain([t0db, bucket.db("nominal")])
    job = job_factory(cal, bucket, tmp_path / "job", {n: bucket.raw_entries(n) for n in cal.settings.input_data_names},
                      chain=chain, overrides={"cosmic_calib.max_processed_events_per_file": 200,
                                              "mumu_tight_or_highm_calib.max_processed_events_per_file": 250,
                                              "validation_tracks": 400, **TINY_REQUIREMENT, **overrides})
    import json

    cfg = json.loads((job.work_dir / "caf_config.json").read_text())
    cfg["database_chain"] = [str(t0db.database_txt), str(bucket.db("nominal").database_txt)]
    (job.work_dir / "caf_config.json").write_text(json.dumps(cfg))
    cal.calibrate(job)
    entries = {e.name: e for e in job.output_db.entries()}
    return job, read_payload(entries["VXDAlignment"].path), read_payload(entries["CDCAlignment"].path)


def test_alignment_against_truth_and_validation(bucket, job_factory, script, tmp_path, monkeypatch):
    job, vxd, cdc = _run(bucket, job_factory, script, tmp_path)
    from b2luca.alignment.frame import truth_in_frame
    from b2luca.reco.geometry import nominal_geometry

    g = nominal_geometry()
    truth = bucket.truth.read("VXDAlignment", ExpRun(26, 1))
    truth_cdc = bucket.truth.read("CDCAlignment", ExpRun(26, 1))
    assert vxd["params"].shape == truth["params"].shape == (212, 6)
    np.testing.assert_array_equal(vxd["sensor_id"], truth["sensor_id"])
    assert cdc["params"].shape == (56, 3)
    _fr = truth_in_frame(truth["params"], truth_cdc["params"], geom=g)
    tv, _tc = _fr.vxd, _fr.cdc
    # the transverse sensor positions (what tracks measure best) improve several-fold (truth in the frame)
    rms = lambda a: float(np.sqrt(np.mean(a ** 2)))  # noqa: E731
    assert rms(vxd["params"][:, 0] - tv[:, 0]) < 0.4 * rms(tv[:, 0])

    monkeypatch.chdir(tmp_path)
    val = script("validations.vxdcdc_alignment")
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    f = verdict.figures
    assert f["mode"] == "truth"
    # the alignment passes its own strict validation (every pull width, weak mode, overlap and d0 check)
    assert verdict.passed, verdict.message
    # the covariance is beside the payloads, not in them: the payloads stay small
    assert "params_cov" not in vxd and (job.work_dir / "vxdalignment_cov.npz").is_file()
    assert sum(np.asarray(v).nbytes for v in vxd.values()) < 50_000
    # ... and the validation reads it (decorrelated pulls; without it the weak-mode errors are diagonal ones)
    assert f["checks_in_family"] == 2 * 6 + 20 + 5 and f["k_pulls"] == pytest.approx(3.94, abs=0.01)
    assert len(verdict.plots) == 3 and all((tmp_path / p).is_file() for p in verdict.plots)
    assert f["track_chi2_ndf_after"] < f["track_chi2_ndf_before"]
    assert f["overlap_n_after"] > 50 and f["d0_n_events_after"] > 50
    assert f["overlap_rms_um_after"] < f["overlap_rms_um_before"]
    assert f["d0_sigma_i_um_after"] < f["d0_sigma_i_um_before"]
    # the injected truth's radial expansion / twist (make_truth) is seen before the alignment
    assert abs(f["weak_vxd_radial_expansion_um_before"]) > 10
    # a bucket where nothing moves: the per-run monitor proposes no boundary
    assert f["auto_boundaries_proposed"] == "none"
    # the precision requirement: with cosmics every mode is known well enough (the figures say how well)
    assert f["weak_modes_above_max_error"] == 0 and f["weak_mode_worst_error_over_max"] < 1.0
    assert f["weak_cdc_tz_um_error"] < f["weak_cdc_tz_um_max_error"] == f["max_error_cdc_translation_um"]
    # real data: no truth -> the data-only checks, and the verdict says so
    verdict = val.run_validation(*args)
    assert verdict.figures["mode"] == "data-only" and "data-only checks only" in verdict.message
    assert "weak_vxd_twist_urad" not in verdict.figures and "overlap_rms_um_after" in verdict.figures
    # an alignment that moved nothing fails
    bad = dict(vxd)
    bad["params"] = np.zeros_like(vxd["params"])
    job.output_db.store("VXDAlignment", bad, job.output_iov)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert not verdict.passed and "weak mode" in verdict.message and "pull" in verdict.message



INJECT = {"vxd_radial_expansion_um": 20.0, "cdc_twist_urad": 50.0}


def test_injected_weak_modes_removed_end_to_end(bucket, job_factory, script, tmp_path, monkeypatch):
    """A sim with a 20 um VXD radial expansion and a 50 urad CDC twist injected: the alignment removes them
    (amplitude of fitted - true within 3 of its error), while before the alignment they are in the truth."""
    from b2luca.sim import simulate_bucket

    root = tmp_path / "bucket"
    events = {"cosmic_calib": 300, "mumu_tight_or_highm_calib": 1500}  # what the alignment reads (tests' conftest)
    seed = int(os.environ.get("B2LUCA_TEST_SEED", "424242"))  # the session bucket's seed (conftest)
    summary = simulate_bucket(bucket="weak", experiment=26, runs=bucket.runs, seed=seed, events=events,
                              data_dir=root / "raw", conditions_dir=root / "conditions", weak_modes=INJECT)
    weak_bucket = type(bucket)(root / "raw", root / "conditions", dict(summary.global_tags), list(bucket.runs))
    job, vxd, cdc = _run(weak_bucket, job_factory, script, tmp_path)
    monkeypatch.chdir(tmp_path)
    val = script("validations.vxdcdc_alignment")
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    f = val.run_validation(*args, reference_db=weak_bucket.truth).figures
    # before: the constants in force (nominal) minus the truth, which carries the injected modes on top of
    # make_truth's own SVD radial expansion and twist
    plain = val.run_validation(*args, reference_db=bucket.truth).figures  # same fit against the plain truth
    assert f["weak_vxd_radial_expansion_um_before"] - plain["weak_vxd_radial_expansion_um_before"] == \
        pytest.approx(-20.0, abs=0.1)
    assert f["weak_cdc_twist_urad_before"] - plain["weak_cdc_twist_urad_before"] == pytest.approx(-50.0, abs=0.1)
    for mode in INJECT:
        assert abs(f[f"weak_{mode}"]) < 3 * f[f"weak_{mode}_error"], (mode, f[f"weak_{mode}"])
    # the same result with the injected modes left in: the validation names both (the amplitudes' errors come
    # from the full covariance that VXDAlignment carries)
    from b2luca.alignment.weak_modes import distortion

    dv, dc = distortion(INJECT)
    job.output_db.store("VXDAlignment", {**vxd, "params": vxd["params"] + dv}, job.output_iov)
    job.output_db.store("CDCAlignment", {**cdc, "params": cdc["params"] + dc}, job.output_iov)
    message = val.run_validation(*args, reference_db=weak_bucket.truth).message
    assert "weak mode vxd_radial_expansion_um" in message and "weak mode cdc_twist_urad" in message, message



def test_injected_weak_modes_fail_without_the_frame_constraints(bucket, job_factory, script, tmp_path, monkeypatch):
    """The injected-weak-mode sim aligned without the frame constraints: the overall motion is undetermined,
    and either the solver refuses the singular system or the result is in no defined frame and the validation
    fails it (pull widths, weak modes).  Without the
    cosmic sample the result stays consistent with the truth but its weak-mode errors grow several-fold: the
    precision requirement fails it (test_without_cosmics_the_validation_fails_for_precision)."""
    from b2luca.sim import simulate_bucket

    root = tmp_path / "bucket"
    events = {"cosmic_calib": 300, "mumu_tight_or_highm_calib": 1500}
    seed = int(os.environ.get("B2LUCA_TEST_SEED", "424242"))
    summary = simulate_bucket(bucket="weak", experiment=26, runs=bucket.runs, seed=seed, events=events,
                              data_dir=root / "raw", conditions_dir=root / "conditions", weak_modes=INJECT)
    weak_bucket = type(bucket)(root / "raw", root / "conditions", dict(summary.global_tags), list(bucket.runs))
    # the system is singular: whether the solver refuses it or a (meaningless) result comes out depends on the
    # round-off of its sums; either is the expected failure, a result that passes the validation is not
    from b2luca.alignment.errors import SolverError

    try:
        job, _vxd, _cdc = _run(weak_bucket, job_factory, script, tmp_path, frame_constraints=False)
    except SolverError as exc:
        assert "singular" in str(exc), exc
        return
    monkeypatch.chdir(tmp_path)
    val = script("validations.vxdcdc_alignment")
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    with np.errstate(invalid="ignore"):  # undetermined modes: their projected variances are not finite
        verdict = val.run_validation(*args, reference_db=weak_bucket.truth)
    assert not verdict.passed
    assert "pull width" in verdict.message and "weak mode" in verdict.message, verdict.message


def test_without_cosmics_the_validation_fails_for_precision(bucket, job_factory, script, tmp_path, monkeypatch):
    """The same bucket without its cosmic sample: the result stays consistent with the truth (its errors grow
    honestly), but the modes the cosmics pin (the z translations, the VXD telescope, the CDC twist) are known
    only to several times the required precision, and the validation fails for that reason alone (with
    cosmics it passes: test_alignment_against_truth_and_validation)."""
    job, _vxd, _cdc = _run(bucket, job_factory, script, tmp_path, **{"cosmic_calib.max_processed_events_per_file": 0})
    monkeypatch.chdir(tmp_path)
    val = script("validations.vxdcdc_alignment")
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert not verdict.passed
    message = verdict.message
    assert message.startswith("weak modes known less precisely than required (") and \
        "the track-sample mix does not pin them (tracks used: cosmic_calib 0, " in message, message
    assert "vxd_telescope_um error" in message and message.endswith("add cosmics (cosmic_calib: tracks through both "
                                                                     "halves, off the IP)"), message
    # nothing else fails: the pulls and the mode amplitudes stay within their (larger) errors
    assert not any(word in message for word in ("pull", "amplitude", "overlap", "d0", "chi2")), message
    f = verdict.figures
    assert f["weak_modes_above_max_error"] >= 1
    assert f["weak_vxd_telescope_um_error"] > f["weak_vxd_telescope_um_max_error"]



def test_bad_precision_requirement_is_one_clear_error_before_the_fit(bucket, job_factory, script, tmp_path):
    cal = script("vxdcdc_alignment")
    job = job_factory(cal, bucket, tmp_path / "job", {n: bucket.raw_entries(n) for n in cal.settings.input_data_names},
                      overrides={"max_weak_mode_error": {"cdc_banana_um": 1.0, "vxd_weak_um": 0}})
    with pytest.raises(ValueError, match=r"VXDCDCAlignment: max_weak_mode_error.cdc_banana_um: not a mode family .*"
                                         r"max_weak_mode_error.vxd_weak_um: expected a positive number"):
        cal.calibrate(job)
    assert not job.output_db.exists() or not list(job.output_db.entries())  # nothing half-written
