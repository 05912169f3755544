"""Time-dependent VXDCDCAlignment: the PXD moves by 30 um in x between run 4 and run 5 of a small simulated bucket.

Checked against the simulation truth: the automatic-boundary option finds run 5, the time-dependent fit writes
VXDAlignment with two IoVs and recovers the PXD position of both intervals (relative to the SVD, which removes
the common frame of the fit) within the statistical errors, and the PXD shift between the intervals.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from b2luca.conditions import DatabaseChain, LocalDatabase, read_payload
from b2luca.iov import ExpRun, IoV
from b2luca.reco.geometry import nominal_geometry

EXP, RUNS, SHIFT_UM = 26, [4, 5], np.array([30.0, 0.0, 0.0])
EVENTS = {"mumu_tight_or_highm_calib": 500, "cosmic_calib": 200}
#: twice the default di-muons per file: the monitor's jump significance ~10 sigma (5 needed) instead of ~7
#: this 2-run bucket without hadrons knows the CDC sagitta modes to ~95 um (the demo: ~15 um): a looser
#: precision requirement for that family, set explicitly (the validation's default is 30 um)
READ = {"mumu_tight_or_highm_calib.max_processed_events_per_file": 500,
        "max_weak_mode_error": {"cdc_weak_um": 150.0}}


@pytest.fixture(scope="module")
def moved(tmp_path_factory, bucket):
    """The moved bucket, as conftest's Bucket (the type of the session's ``bucket``)."""
    from b2luca.sim import simulate_bucket

    root = tmp_path_factory.mktemp("moved")
    s = simulate_bucket(bucket="moved", experiment=EXP, runs=RUNS, seed=1414, events=EVENTS, data_dir=root / "raw",
                        conditions_dir=root / "conditions",
                        movements=[{"part": "PXD", "from_run": 5, "shift_um": SHIFT_UM.tolist()}])
    return type(bucket)(root / "raw", root / "conditions", dict(s.global_tags), list(RUNS))


def _align(bucket, tmp_path, overrides: dict, make_job, load):
    cal = load("vxdcdc_alignment")
    t0db = LocalDatabase(tmp_path / "t0").create()
    t0db.store("CDCTimeZeros", bucket.truth.read("CDCTimeZeros", ExpRun(EXP, 4)), IoV(0, 0, -1, -1))
    job = make_job(cal, bucket, tmp_path / "job", {n: bucket.raw_entries(n) for n in cal.settings.input_data_names},
                   chain=DatabaseChain([t0db, bucket.db("nominal")]), overrides={**READ, **overrides})
    cal.calibrate(job)
    summary = json.loads((job.work_dir / cal.SUMMARY_FILE).read_text())
    return job, summary


def _global_shift_um(geom, params: np.ndarray) -> np.ndarray:
    return 1e3 * np.einsum("sij,sj->si", geom.rot, params[:, :3])


def _check_positions(job, bucket, summary: dict) -> None:
    """Two IoVs; each interval's PXD positions recovered as well as the static alignment does (the overall frame
    and weak modes of the fit are common to both intervals and removed by comparing with the SVD); the PXD step
    between the intervals equals the injected 30 um within its statistical error (the per-run monitor's error of
    the PXD translation relative to the CDC, a joint fit with the track parameters eliminated)."""
    g = nominal_geometry()
    pxd, svd = g.is_pxd, ~g.is_pxd
    vxd = [e for e in job.output_db.entries() if e.name == "VXDAlignment"]
    assert [e.iov for e in vxd] == [IoV(EXP, 4, EXP, 4), IoV(EXP, 5, -1, -1)]
    cdc = [e for e in job.output_db.entries() if e.name == "CDCAlignment"]
    assert [e.iov for e in cdc] == [IoV(EXP, 4, -1, -1)]  # the CDC did not move: one IoV
    fit, true = {}, {}
    for e in vxd:
        run = e.iov.run_low
        fit[run] = _global_shift_um(g, read_payload(e.path)["params"])
        true[run] = _global_shift_um(g, bucket.truth.read("VXDAlignment", ExpRun(EXP, run))["params"])
        after = (fit[run] - true[run])[pxd] - (fit[run] - true[run])[svd].mean(0)
        before = -true[run][pxd] + true[run][svd].mean(0)
        rms_after, rms_before = np.sqrt(np.mean(after ** 2, 0)), np.sqrt(np.mean(before ** 2, 0))
        assert np.all(rms_after[:2] < 0.6 * rms_before[:2]), (run, rms_after, rms_before)
    np.testing.assert_allclose(true[5][pxd].mean(0) - true[4][pxd].mean(0), SHIFT_UM, atol=1e-9)
    step = fit[5] - fit[4]
    assert np.allclose(step[svd], 0.0)  # the SVD has one set of parameters
    err = np.hypot(*np.array(summary["trend"]["parts"]["PXD"]["error_um"]))
    assert np.all(np.abs(step[pxd].mean(0) - SHIFT_UM) < 3 * err), (step[pxd].mean(0), err)


def test_automatic_boundary_found_and_applied(moved, tmp_path, job_factory, script, monkeypatch):
    job, summary = _align(moved, tmp_path, {"auto_boundaries": "apply"}, job_factory, script)
    proposed = summary["proposed_boundaries"]
    assert [(b["part"], b["exp"], b["run"]) for b in proposed] == [("PXD", EXP, 5)], proposed
    assert proposed[0]["jump_um"] == pytest.approx(SHIFT_UM[0], abs=5 * proposed[0]["jump_um"] / proposed[0]["significance"])
    # before applying, the per-run trend shows the jump; after, the PXD has two intervals
    assert summary["timedep"] == [{"part": "PXD", "boundaries": [[EXP, 5]]}]
    before = summary["trend_before_apply"]["parts"]["PXD"]
    jump, err = np.subtract(*before["shift_um"][::-1])[0], np.hypot(*np.array(before["error_um"])[:, 0])
    assert abs(jump - SHIFT_UM[0]) < 5 * err, (jump, err)  # the monitor measures the movement itself
    assert [it["iteration"] for it in summary["iterations"]][:1] == [1] and len(summary["iterations"]) >= 3
    assert set(summary["timing_s"]) >= {"track_fit_and_records", "solve", "monitor"}
    _check_positions(job, moved, summary)
    # the validation's trend section: the boundary is modelled, so it passes; the plot is written
    from calibrations.validations._alignment_trend import trend_section

    monkeypatch.chdir(tmp_path)
    figures, plots, reasons = trend_section(job.work_dir)
    assert reasons == [] and figures["auto_boundaries_proposed"] == f"PXD@{EXP},5" and (tmp_path / plots[0]).is_file()


def test_trend_section_fails_on_an_unmodelled_jump(tmp_path, monkeypatch):
    from calibrations.validations._alignment_trend import SUMMARY_FILE, trend_section

    summary = {"iterations": [{"iteration": 1, "max_pull": 9.0, "max_shift_um": 50.0}], "converged": False,
               "timedep": [], "auto_boundaries": "propose", "trend": {"runs": [[EXP, 4], [EXP, 5]], "reference": "CDC",
                                                                     "parts": {"PXD": {"shift_um": [[0, 0, 0], [30, 0, 0]],
                                                                                       "error_um": [[1, 1, 9]] * 2}}},
               "proposed_boundaries": [{"part": "PXD", "exp": EXP, "run": 5, "jump_um": 30.0, "significance": 21.2}]}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summary))
    monkeypatch.chdir(tmp_path)
    figures, plots, reasons = trend_section(tmp_path)
    assert len(reasons) == 1 and reasons[0].startswith("PXD jumps by 30.0 um (21.2 sigma) at run 26,5")
    assert figures["iterations_converged"] == "no"
    summary["timedep"] = [{"part": "PXD", "boundaries": [[EXP, 5]]}]
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summary))
    assert trend_section(tmp_path)[2] == []


def test_configured_timedep_basf2_format(moved, tmp_path, job_factory, script, monkeypatch):
    job, summary = _align(moved, tmp_path, {"timedep": [[["PXD"], [[0, 5, EXP]]]], "auto_boundaries": "propose"},
                          job_factory, script)
    assert summary["proposed_boundaries"] == []  # the movement is already modelled
    _check_positions(job, moved, summary)
    # the validation compares every interval with the truth of that interval (the covariance file has both)
    monkeypatch.chdir(tmp_path)
    val = script("validations.vxdcdc_alignment")
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [EXP, 4, -1, -1], job.expert_config)
    verdict = val.run_validation(*args, reference_db=moved.truth)
    f = verdict.figures
    assert {"e26r4_vxd_du_pull_width", "e26r5_vxd_du_pull_width"} <= set(f)
    assert "interval from run 26,5" not in verdict.message, verdict.message
    assert f["checks_in_family"] == 2 * (2 * 6 + 20) + 5
    # the run-5 payload with the PXD where it was in run 4: only the comparison with run 5's truth sees it
    e4, e5 = [e for e in job.output_db.entries() if e.name == "VXDAlignment"]
    job.output_db.store("VXDAlignment", read_payload(e4.path), e5.iov)
    bad = val.run_validation(*args, reference_db=moved.truth)
    assert "interval from run 26,5: vxd_du" in bad.message and not bad.passed, bad.message
    assert bad.figures["e26r4_vxd_du_pull_width"] == f["e26r4_vxd_du_pull_width"]


def test_bad_timedep_config_is_one_clear_error(moved, tmp_path, job_factory, script):
    from b2luca.alignment.errors import TimedepConfigError

    with pytest.raises(TimedepConfigError, match=r"VXDCDCAlignment: expert_config key 'timedep'\[0\]: unknown part"):
        _align(moved, tmp_path, {"timedep": [[["TOP"], [[0, 5, EXP]]]]}, job_factory, script)


def test_payload_boundaries_make_vxd_and_cdc_time_dependent(script):
    cal = script("vxdcdc_alignment")
    tr = cal.timedep_translator({"payload_boundaries": [[EXP, 5]], "timedep": [[["PXD"], [[0, 7, EXP]]]]},
                                nominal_geometry())
    # nested parts resolve into disjoint ones: the PXD changes at both runs, the SVD and the CDC at run 5
    assert {t.part: t.boundaries for t in tr.timedep} == {"PXD": ((EXP, 5), (EXP, 7)), "SVD": ((EXP, 5),),
                                                          "CDC": ((EXP, 5),)}
    assert cal.resolve_parts({"PXD+X": {(EXP, 5)}, "PXD-X": {(EXP, 5)}, "SVD+X": {(EXP, 6)}}) == {
        "PXD": ((EXP, 5),), "SVD+X": ((EXP, 6),)}
