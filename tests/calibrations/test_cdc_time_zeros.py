"""CDCTimeZeros: leading/trailing-edge fit against the simulation truth, and the validation."""

from __future__ import annotations

import numpy as np

from b2luca.conditions import read_payload
from b2luca.iov import ExpRun


def _run(bucket, job_factory, script, tmp_path):
    cal = script("cdc_time_zeros")
    job = job_factory(cal, bucket, tmp_path / "job", {n: bucket.raw_entries(n) for n in cal.settings.input_data_names})
    cal.calibrate(job)
    return job, read_payload(job.output_db.entries()[-1].path)


def test_t0_against_truth(bucket, job_factory, script, tmp_path):
    job, out = _run(bucket, job_factory, script, tmp_path)
    truth = bucket.truth.read("CDCTimeZeros", ExpRun(26, 1))
    np.testing.assert_array_equal(out["board"], truth["board"])
    ok = np.isfinite(out["t0_error"])
    assert ok.all()
    pulls = (out["t0"] - truth["t0"]) / out["t0_error"]
    n = pulls.size
    assert abs(pulls.mean()) < 5 / np.sqrt(n)
    assert abs(pulls.std() - 1) < 5 / np.sqrt(2 * n)
    assert np.median(out["t0_error"]) < 1.0  # ns, against a 3 ns spread of the truth
    # the fitted common resolution is the simulated 110 um
    assert abs(out["sigma_mm"][0] - 0.110) < 0.005


def test_validation(bucket, job_factory, script, tmp_path, monkeypatch):
    job, out = _run(bucket, job_factory, script, tmp_path)
    val = script("validations.cdc_time_zeros")
    monkeypatch.chdir(tmp_path)
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert verdict.passed, verdict.message
    assert len(verdict.plots) == 2
    verdict = val.run_validation(*args)
    assert verdict.passed, verdict.message
    assert verdict.figures["mode"] == "split-half"
    bad = dict(out)
    bad["t0"] = out["t0"] - 10 * out["t0_error"]
    job.output_db.store("CDCTimeZeros", bad, job.output_iov)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert not verdict.passed and "pull mean" in verdict.message
    verdict = val.run_validation(*args)  # without truth the data themselves disagree with the stored t0
    assert not verdict.passed and "stored result vs data" in verdict.message


def test_payload_boundaries_are_rejected_clearly(bucket, job_factory, script, tmp_path):
    import pytest

    cal = script("cdc_time_zeros")
    job = job_factory(cal, bucket, tmp_path / "job", {n: bucket.raw_entries(n) for n in cal.settings.input_data_names},
                      overrides={"payload_boundaries": [[26, 4]]})
    with pytest.raises(ValueError, match=r"expert_config\.payload_boundaries = \[\[26, 4\]\].*expected \[\]"):
        cal.calibrate(job)
    assert not job.output_db.entries()  # nothing half-written


def test_edge_model_sigma_derivatives_match_finite_differences(script):
    cal = script("cdc_time_zeros")
    rng = np.random.default_rng(3)
    half = rng.uniform(4.0, 9.0, 2000)
    x = np.concatenate([rng.uniform(-1.0, 10.0, 1900), rng.uniform(-1.5, -0.6, 100)])  # incl. the far left tail
    sigma, eps = 0.11, 1e-6
    lp, _g, _h, ds, dss = cal._terms(x, half, sigma)
    lp_p, _, _, ds_p, _ = cal._terms(x, half, sigma + eps)
    lp_m, _, _, ds_m, _ = cal._terms(x, half, sigma - eps)
    np.testing.assert_allclose(ds, (lp_p - lp_m) / (2 * eps), rtol=1e-5, atol=1e-4 * np.abs(ds).max())
    num = (ds_p - ds_m) / (2 * eps)
    np.testing.assert_allclose(dss, num, rtol=1e-5, atol=1e-5 * np.abs(num).max())
    assert not np.allclose(dss + ds / sigma, num, rtol=1e-5, atol=1e-5 * np.abs(num).max())  # a wrong term is seen
