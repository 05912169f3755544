"""SVDTimeOffsets: calibration against the simulation truth, and its validation."""

from __future__ import annotations

import os

import numpy as np

from b2luca.conditions import read_payload
from b2luca.iov import ExpRun


def _run(bucket, job_factory, script, tmp_path):
    cal = script("svd_time_offsets")
    job = job_factory(cal, bucket, tmp_path / "job", {"hadron_calib": bucket.raw_entries("hadron_calib")})
    cal.calibrate(job)
    (entry,) = job.output_db.entries()
    return job, read_payload(entry.path)


def test_offsets_match_truth_within_errors(bucket, job_factory, script, tmp_path):
    job, out = _run(bucket, job_factory, script, tmp_path)
    truth = bucket.truth.read("SVDTimeOffsets", ExpRun(26, 1))
    assert set(truth) <= set(out)  # same keys as the truth payload (plus offset_error, n_hits)
    np.testing.assert_array_equal(out["sensor_id"], truth["sensor_id"])
    ok = np.isfinite(out["offset_error"])
    assert ok.mean() > 0.9
    pulls = (out["offset"][ok] - truth["offset"][ok]) / out["offset_error"][ok]
    n = pulls.size
    assert abs(pulls.mean()) < 5 / np.sqrt(n)
    assert abs(pulls.std() - 1) < 5 / np.sqrt(2 * n)
    # the offsets really moved: the truth spread is 5 ns, errors are well below
    assert np.median(out["offset_error"][ok]) < 0.5
    # sensors below the threshold keep the nominal value (0) and are flagged
    low = out["n_hits"] < job.expert_config["min_hits_per_sensor"]
    assert np.all(out["offset"][low] == 0.0) and np.all(np.isnan(out["offset_error"][low]))


def test_validation_passes_good_and_fails_shifted(bucket, job_factory, script, tmp_path, monkeypatch):
    job, out = _run(bucket, job_factory, script, tmp_path)
    val = script("validations.svd_time_offsets")
    vdir = tmp_path / "val"
    vdir.mkdir()
    monkeypatch.chdir(vdir)
    verdict = val.run_validation(str(job.work_dir), str(job.work_dir / "input_data.json"),
                                 [26, 1, -1, -1], job.expert_config, reference_db=bucket.truth)
    assert verdict.passed, verdict.message
    assert verdict.figures["mode"] == "truth"
    assert all(os.path.isfile(p) for p in verdict.plots) and len(verdict.plots) == 2
    # without truth: split-half self-consistency passes too
    verdict = val.run_validation(str(job.work_dir), str(job.work_dir / "input_data.json"),
                                 [26, 1, -1, -1], job.expert_config)
    assert verdict.passed, verdict.message
    assert verdict.figures["mode"] == "split-half"
    # a result shifted by 10 sigma fails against the truth
    bad = dict(out)
    bad["offset"] = out["offset"] + 10 * np.nan_to_num(out["offset_error"])
    job.output_db.store("SVDTimeOffsets", bad, job.output_iov)
    verdict = val.run_validation(str(job.work_dir), str(job.work_dir / "input_data.json"),
                                 [26, 1, -1, -1], job.expert_config, reference_db=bucket.truth)
    assert not verdict.passed
    assert "pull mean" in verdict.message
    verdict = val.run_validation(str(job.work_dir), str(job.work_dir / "input_data.json"),
                                 [26, 1, -1, -1], job.expert_config)  # without truth: the data disagree
    assert not verdict.passed and "stored result vs data" in verdict.message
