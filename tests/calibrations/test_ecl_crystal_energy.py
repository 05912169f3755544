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


def test_solver_equals_an_exact_sparse_solve(script):
    """solve_constants (symmetric-mode LU, probed diagonal of the inverse) against scipy's default sparse solve of
    the same normal equations, and the probed errors against exact columns of the inverse."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    from b2luca.reco.geometry import ECL_NPHI, N_ECL_CRYSTALS

    cal = script("ecl_crystal_energy")
    rng = np.random.default_rng(7)
    n_cl = 30000
    centre = rng.integers(0, N_ECL_CRYSTALS, n_cl)  # 3x3 clusters (phi wraps, theta clipped)
    it, ip = np.divmod(centre, ECL_NPHI)
    dt, dp = np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij")
    n_theta = N_ECL_CRYSTALS // ECL_NPHI
    crystal = (np.clip(it[:, None] + dt.ravel(), 0, n_theta - 1) * ECL_NPHI + (ip[:, None] + dp.ravel()) % ECL_NPHI)
    cl = np.repeat(np.arange(n_cl), 9)
    amp = rng.uniform(0.01, 1.0, crystal.shape).ravel()
    crystal = crystal.ravel()
    true_c = rng.normal(1.0, 0.03, N_ECL_CRYSTALS)
    e_exp = np.bincount(cl, true_c[crystal] * amp, minlength=n_cl) + rng.normal(0, 0.003, n_cl)
    n_cr = np.full(n_cl, 9)
    cfg = dict(cal.settings.expert_config)
    prev = np.ones(N_ECL_CRYSTALS)
    res = cal.solve_constants(cl, crystal, amp, e_exp, n_cr, prev, cfg)
    var_t = n_cr * cfg["crystal_noise_gev"] ** 2 * res["scale"][0]
    design = sp.csr_matrix((amp, (cl, crystal)), shape=(n_cl, N_ECL_CRYSTALS))
    prior_w = 1.0 / cfg["prior_sigma"] ** 2
    normal = (design.T @ sp.diags(1.0 / var_t) @ design + prior_w * sp.identity(N_ECL_CRYSTALS)).tocsc()
    exact = spsolve(normal, design.T @ (e_exp / var_t) + prior_w * prev)
    np.testing.assert_allclose(res["constant"], exact, rtol=1e-10, atol=0)
    probe = rng.choice(N_ECL_CRYSTALS, 25, replace=False)
    unit = sp.csc_matrix((np.ones(probe.size), (probe, np.arange(probe.size))), shape=(N_ECL_CRYSTALS, probe.size))
    cols = spsolve(normal, unit).toarray()
    # the probing's own approximation (crystals 16 apart solved together) is ~1e-3 on these random 3x3 clusters
    np.testing.assert_allclose(res["constant_error"][probe], np.sqrt(cols[probe, np.arange(probe.size)]), rtol=5e-3)
