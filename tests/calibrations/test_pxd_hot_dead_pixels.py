"""PXDHotDeadPixels: masks against the simulation truth, and the validation."""

from __future__ import annotations

import numpy as np
from scipy.stats import poisson

from b2luca.conditions import DatabaseChain, read_payload
from b2luca.iov import ExpRun


def _calibrate(bucket, job_factory, script, work_dir, entries, chain=None, overrides=None):
    cal = script("pxd_hot_dead_pixels")
    job = job_factory(cal, bucket, work_dir, {"random_calib": entries}, chain=chain, overrides=overrides)
    cal.calibrate(job)
    return job, read_payload(job.output_db.entries()[-1].path)


def test_masks_against_truth(bucket, job_factory, script, tmp_path):
    job, out = _calibrate(bucket, job_factory, script, tmp_path / "job", bucket.raw_entries("random_calib"))
    truth = bucket.truth.read("PXDMasks", ExpRun(26, 1))
    np.testing.assert_array_equal(out["sensor_id"], truth["sensor_id"])
    assert out["status"].shape == truth["status"].shape and out["status"].dtype == np.uint8
    ts, s = truth["status"], out["status"]
    n_ev = int(out["n_events"][0])
    assert n_ev == 400
    mu = out["occupancy"][:, None] * n_ev
    # with mu ~ 12 the data decide: every dead pixel is found; false dead ~ Poisson(sum exp(-mu))
    assert np.all(s[ts == 2] == 2)
    lam = float(np.sum(np.where(ts == 0, np.exp(-mu), 0)))
    assert ((s == 2) & (ts != 2)).sum() <= poisson.isf(1e-3, lam)
    # hot pixels fire in half of the events: all found, no good pixel flagged
    assert np.all(s[ts == 1] == 1)
    assert ((s == 1) & (ts != 1)).sum() == 0
    # occupancy: 3 % per event, error sqrt(mu N_pix)/N_pix/N per sensor
    err = np.sqrt(0.03 * n_ev * 7500) / 7500 / n_ev
    assert np.all(np.abs(out["occupancy"] - 0.03) < 5 * err)


def test_little_data_keeps_the_known_mask(bucket, job_factory, script, tmp_path):
    """One run with the experts' staging mask in the chain: dead pixels it knows stay dead, new ones
    need data (mu ~ 6 here; with a dead prior of 5e-4, exp(-6) > 5e-4/(1-5e-4): the data alone do not
    decide, and the known mask wins)."""
    one_run = [e for e in bucket.raw_entries("random_calib") if e[1].run == 1]
    chain = DatabaseChain([bucket.db("staging_pxd")])
    job, out = _calibrate(bucket, job_factory, script, tmp_path / "job", one_run, chain=chain,
                          overrides={"dead_prior_fraction": 5e-4})
    assert np.all(np.exp(-out["occupancy"] * out["n_events"][0]) > 5e-4 / (1 - 5e-4))
    staging = bucket.db("staging_pxd").read("PXDMasks", ExpRun(26, 1))["status"]
    truth = bucket.truth.read("PXDMasks", ExpRun(26, 1))["status"]
    assert np.all(out["status"][(staging == 2)] == 2)
    assert np.all(out["status"][(truth == 2) & (staging != 2)] == 0)


def test_validation(bucket, job_factory, script, tmp_path, monkeypatch):
    job, out = _calibrate(bucket, job_factory, script, tmp_path / "job", bucket.raw_entries("random_calib"))
    val = script("validations.pxd_hot_dead_pixels")
    monkeypatch.chdir(tmp_path)
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert verdict.passed, verdict.message
    assert verdict.figures["hot_efficiency"] == 1.0 and verdict.figures["dead_efficiency"] == 1.0
    assert len(verdict.plots) == 2
    assert val.run_validation(*args).passed
    # forget a third of the hot pixels: missed hot far above its (tiny) expectation, and the good-pixel
    # counts are no longer Poisson
    bad = dict(out)
    st = out["status"].copy()
    hot = np.flatnonzero(st.reshape(-1) == 1)
    st.reshape(-1)[hot[::3]] = 0
    bad["status"] = st
    job.output_db.store("PXDMasks", bad, job.output_iov)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert not verdict.passed
    assert "missed_hot" in verdict.message and "not Poisson" in verdict.message
    assert not val.run_validation(*args).passed
