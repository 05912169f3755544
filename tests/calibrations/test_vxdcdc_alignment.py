"""VXDCDCAlignment with the b2luca solver: residual misalignment against the truth, and the validation."""

from __future__ import annotations

import numpy as np

from b2luca.conditions import DatabaseChain, LocalDatabase, read_payload
from b2luca.iov import ExpRun, IoV


def _run(bucket, job_factory, script, tmp_path):
    cal = script("vxdcdc_alignment")
    # the constants in force: this bucket's CDC T0s (upstream calibration) on top of the nominal tag
    t0db = LocalDatabase(tmp_path / "t0").create()
    t0db.store("CDCTimeZeros", bucket.truth.read("CDCTimeZeros", ExpRun(26, 1)), IoV(0, 0, -1, -1))
    chain = DatabaseChain([t0db, bucket.db("nominal")])
    job = job_factory(cal, bucket, tmp_path / "job", {n: bucket.raw_entries(n) for n in cal.settings.input_data_names},
                      chain=chain, overrides={"cosmic_calib.max_processed_events_per_file": 200,
                                              "mumu_tight_or_highm_calib.max_processed_events_per_file": 250,
                                              "validation_tracks": 400})
    import json

    cfg = json.loads((job.work_dir / "caf_config.json").read_text())
    cfg["database_chain"] = [str(t0db.database_txt), str(bucket.db("nominal").database_txt)]
    (job.work_dir / "caf_config.json").write_text(json.dumps(cfg))
    cal.calibrate(job)
    entries = {e.name: e for e in job.output_db.entries()}
    return job, read_payload(entries["VXDAlignment"].path), read_payload(entries["CDCAlignment"].path)


def test_alignment_against_truth_and_validation(bucket, job_factory, script, tmp_path, monkeypatch):
    job, vxd, cdc = _run(bucket, job_factory, script, tmp_path)
    from b2luca.reco.geometry import aligned_frames, nominal_geometry

    g = nominal_geometry()
    truth = bucket.truth.read("VXDAlignment", ExpRun(26, 1))
    assert vxd["params"].shape == truth["params"].shape == (212, 6)
    np.testing.assert_array_equal(vxd["sensor_id"], truth["sensor_id"])
    assert cdc["params"].shape == (56, 3)
    val = script("validations.vxdcdc_alignment")
    c_true, _ = aligned_frames(g, truth["params"])
    c_fit, _ = aligned_frames(g, vxd["params"])
    _w, after = val.rigid_body_fit(g.center, c_fit - c_true)
    _w, before = val.rigid_body_fit(g.center, g.center - c_true)
    # the transverse sensor positions (what tracks measure best) improve several-fold
    loc_a = np.einsum("sji,sj->si", g.rot, after)
    loc_b = np.einsum("sji,sj->si", g.rot, before)
    assert np.sqrt(np.mean(loc_a[:, 0] ** 2)) < 0.4 * np.sqrt(np.mean(loc_b[:, 0] ** 2))

    monkeypatch.chdir(tmp_path)
    args = (str(job.work_dir), str(job.work_dir / "input_data.json"), [26, 1, -1, -1], job.expert_config)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert verdict.passed, verdict.message
    assert verdict.figures["track_chi2_ndf_after"] < verdict.figures["track_chi2_ndf_before"]
    assert len(verdict.plots) == 3  # figure, table, per-run trend + iterations
    # a bucket where nothing moves: the per-run monitor proposes no boundary
    assert verdict.figures["auto_boundaries_proposed"] == "none"
    # an alignment that moved nothing fails (no improvement against the truth)
    bad = dict(vxd)
    bad["params"] = np.zeros_like(vxd["params"])
    job.output_db.store("VXDAlignment", bad, job.output_iov)
    verdict = val.run_validation(*args, reference_db=bucket.truth)
    assert not verdict.passed and "not below" in verdict.message
