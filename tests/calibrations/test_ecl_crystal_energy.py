"""ECLCrystalEnergy from Bhabha cDSTs: against the simulation truth, and the validation."""

from __future__ import annotations

import numpy as np

from b2luca.conditions import read_payload
from b2luca.iov import ExpRun


def _run(bucket, job_factory, script, cdst_files, tmp_path):
    cal = script("ecl_crystal_energy")
    job = job_factory(cal, bucket, tmp_path / "job", {"bhabha_all_calib": cdst_files("bhabha_all_calib")})
    cal.calibrate(job)
    return job, read_payload(job.output_db.entries()[-1].path)


def test_expected_energy_is_the_two_body_kinematics(script):
    cal = script("ecl_crystal_energy")
    from b2luca.reco.geometry import E_HER, E_LER

    # along the beams the massless final-state particles carry the beam energies
    assert np.isclose(cal.expected_energy(np.array([1e6]))[0], E_HER, rtol=1e-6)
    assert np.isclose(cal.expected_energy(np.array([-1e6]))[0], E_LER, rtol=1e-6)


def test_constants_against_truth(bucket, job_factory, script, cdst_files, tmp_path):
    job, out = _run(bucket, job_factory, script, cdst_files, tmp_path)
    truth = bucket.truth.read("ECLCrystalEnergy", ExpRun(26, 1))
    np.testing.assert_array_equal(out["crystal"], truth["crystal"])
    pulls = (out["constant"] - truth["constant"]) / out["constant_error"]
    informed = out["n_entries"] >= job.expert_config["min_entries_per_crystal"]
    assert informed.sum() > 500
    for sel in (informed, np.ones(pulls.size, bool)):
        n = int(sel.sum())
        assert abs(pulls[sel].mean()) < 5 / np.sqrt(n)
        assert abs(pulls[sel].std() - 1) < 5 / np.sqrt(2 * n)
    # the data-constrained crystals are better known than the 3 % spread before calibration
    assert np.median(out["constant_error"][informed]) < 0.02
    assert np.sqrt(np.mean((out["constant"] - truth["constant"])[informed] ** 2)) < \
        np.sqrt(np.mean((1.0 - truth["constant"])[informed] ** 2))


def test_validation(bucket, job_factory, script, cdst_files, tmp_path, monkeypatch):
    job, out = _run(bucket, job_factory, script, cdst_files, tmp_path)
    val = script("validations.ecl_crystal_energy")
    monkeypatch.chdir(tmp_path)
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert verdict.passed, verdict.message
    assert verdict.figures["ratio_rms_new"] < verdict.figures["ratio_rms_before"]
    assert val.run_validation(*args).passed
    bad = dict(out)
    bad["constant"] = out["constant"] * 1.02  # a 2 % scale error: ~10 sigma of the informed crystals
    job.output_db.store("ECLCrystalEnergy", bad, job.output_iov)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert not verdict.passed and "pull mean" in verdict.message
    verdict = val.run_validation(*args)
    assert not verdict.passed and "E/E_expected mean" in verdict.message
