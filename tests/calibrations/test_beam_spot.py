"""BeamSpot from di-muon cDST tracks: against the simulation truth, and the validation."""

from __future__ import annotations

import numpy as np

from b2luca.conditions import read_payload
from b2luca.iov import ExpRun


def _run(bucket, job_factory, script, cdst_files, tmp_path):
    cal = script("beam_spot")
    job = job_factory(cal, bucket, tmp_path / "job", {"mumu_tight_or_highm_calib": cdst_files("mumu_tight_or_highm_calib")})
    cal.calibrate(job)
    return job, read_payload(job.output_db.entries()[-1].path)


def test_beam_spot_against_truth(bucket, job_factory, script, cdst_files, tmp_path):
    job, out = _run(bucket, job_factory, script, cdst_files, tmp_path)
    truth = bucket.truth.read("BeamSpot", ExpRun(26, 1))
    assert set(truth) <= set(out)
    assert out["position"].shape == (3,) and out["position_error"].shape == (3, 3) and out["size"].shape == (3, 3)
    n = int(out["n_events"][0])
    assert n > 0.9 * 2 * 1500  # nearly every di-muon event is selected
    pos_err = np.sqrt(np.diag(out["position_error"]))
    pulls = (out["position"] - truth["position"]) / pos_err
    assert np.all(np.abs(pulls) < 4), pulls
    assert pos_err[0] < 0.001 and pos_err[1] < 0.001  # mm: micrometre precision in x, y
    size_pulls = (np.diag(out["size_unconstrained"]) - np.diag(truth["size"])) / np.diag(out["size_error"])
    assert np.all(np.abs(size_pulls) < 4), size_pulls
    # the x width (10 um) is resolved; the y width (0.2 um) is below the resolution: compatible with 0
    assert out["size_unconstrained"][0, 0] > 5 * out["size_error"][0, 0]
    assert np.all(np.linalg.eigvalsh(out["size"]) >= -1e-15)


def test_validation(bucket, job_factory, script, cdst_files, tmp_path, monkeypatch):
    job, out = _run(bucket, job_factory, script, cdst_files, tmp_path)
    val = script("validations.beam_spot")
    monkeypatch.chdir(tmp_path)
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert verdict.passed, verdict.message
    assert len(verdict.plots) == 2
    verdict = val.run_validation(*args)
    assert verdict.passed, verdict.message
    bad = dict(out)
    bad["position"] = out["position"] + 10 * np.sqrt(np.diag(out["position_error"]))
    job.output_db.store("BeamSpot", bad, job.output_iov)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert not verdict.passed and "position" in verdict.message
    verdict = val.run_validation(*args)
    assert not verdict.passed


def test_alignment_systematic_from_the_manifest(bucket, script, cdst_files, tmp_path):
    val = script("validations.beam_spot")
    files = [p for p, _ in cdst_files("mumu_tight_or_highm_calib")]
    true_vxd = bucket.truth.read("VXDAlignment", ExpRun(26, 1))
    # produced with the true alignment: no systematic
    assert np.allclose(val.alignment_systematic(files, true_vxd), 0.0)
    assert np.allclose(val.alignment_size_systematic(files, true_vxd), 0.0)
    # a cDST made with the nominal geometry (manifest: VXDAlignment null): the true sensor displacements
    fake = tmp_path / "r00001" / "mumu_tight_or_highm_calib" / "cdst_0.root"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"")
    (tmp_path / "r00001" / "manifest.json").write_text(
        '{"groups": {"tracks": {"VXDAlignment": null}}}')
    syst = val.alignment_systematic([fake], true_vxd)
    from b2luca.alignment.frame import truth_in_frame
    from b2luca.reco.geometry import aligned_frames, nominal_geometry

    g = nominal_geometry()
    # the truth in the alignment frame (overall VXD motion removed) against the nominal geometry
    c, _ = aligned_frames(g, truth_in_frame(true_vxd["params"], np.zeros((0, 3)), geom=g).vxd)
    np.testing.assert_allclose(np.diag(syst), np.mean((c - g.center)[g.is_pxd] ** 2, axis=0))
    assert np.all(np.sqrt(np.diag(syst)) > 0.005)  # tens of micrometres: half-shell shifts of 50 um
    d = (c - g.center)[g.is_pxd]
    np.testing.assert_allclose(val.alignment_size_systematic([fake], true_vxd), np.var(d, axis=0))
    # the true beam spot in the frame of the alignment used: the raw truth for cDSTs made with the true
    # alignment, the truth without the true VXD's overall motion for a cDST made in the nominal frame
    true_bs = np.asarray(bucket.truth.read("BeamSpot", ExpRun(26, 1))["position"], float)
    np.testing.assert_allclose(val.true_position_in_frame(files, true_vxd, true_bs), true_bs, atol=2e-4)
    f = truth_in_frame(true_vxd["params"], np.zeros((0, 3)), true_bs, geom=g)
    np.testing.assert_allclose(val.true_position_in_frame([fake], true_vxd, true_bs), f.beam_position, atol=1e-12)
    assert np.max(np.abs(f.beam_position - true_bs)) > 0.005  # the frame matters at the 10 um level
