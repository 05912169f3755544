"""ECLMuPiCNN: training on a small simulated bucket, the payload round trip in a fresh process,
determinism, the validation (passes when trained, fails with untrained weights), and the one-line
error without PyTorch."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from b2luca.conditions import DatabaseChain, LocalDatabase
from b2luca.contract import CalibrationJob
from b2luca.iov import ExpRun, IoV

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = 26

torch = pytest.importorskip("torch")  # the ml extra; CI installs it (the missing-torch test below runs anyway)

RUNS = [1, 2]
EVENTS = {"radmumu_calib": 1500, "hadron_calib": 900}
SMALL = {"n_maps": 8, "hidden": 32, "epochs": 10, "min_candidates": 200}
#: the test bucket is small: fewer test tracks required than in a real bucket
VALIDATION = {"min_test_tracks": 40}


@pytest.fixture(scope="module")
def mupi(tmp_path_factory) -> dict:
    """A two-run bucket with radmumu_calib and hadron_calib, its cDSTs, and a trained ECLMuPiCNN job."""
    from b2luca.production import produce_run
    from b2luca.sim import simulate_bucket
    from calibrations import ecl_mupi_cnn

    root = tmp_path_factory.mktemp("mupi")
    summary = simulate_bucket(bucket="mupi", experiment=EXPERIMENT, runs=RUNS, seed=1616, events=EVENTS,
                              data_dir=root / "raw", conditions_dir=root / "conditions")
    # cDSTs made with the truth constants (a perfect raw-stage calibration, as in tests/calibrations/conftest.py)
    truth = DatabaseChain([LocalDatabase(root / "conditions" / summary.global_tags["truth"])])
    nominal = DatabaseChain([LocalDatabase(root / "conditions" / summary.global_tags["nominal"])])
    for run in RUNS:
        rel = Path(f"e{EXPERIMENT:04d}") / f"r{run:05d}"
        produce_run(root / "raw" / rel, root / "cdst" / rel, truth, ExpRun(EXPERIMENT, run))
    inputs = {tag: [(p, ExpRun(EXPERIMENT, run)) for run in RUNS
                    for p in sorted((root / "cdst" / f"e{EXPERIMENT:04d}" / f"r{run:05d}" / tag).glob("cdst_*.root"))]
              for tag in EVENTS}
    job = _job(root / "job", inputs, nominal)
    ecl_mupi_cnn.calibrate(job)
    return {"inputs": inputs, "job": job, "root": root}


def _job(work_dir: Path, inputs: dict, chain) -> "CalibrationJob":
    """The CalibrationJob the native runner would build (plus input_data.json for the validation)."""
    from calibrations import ecl_mupi_cnn

    work_dir.mkdir(parents=True)
    (work_dir / "input_data.json").write_text(json.dumps({k: [[str(p), er.as_list()] for p, er in v]
                                                          for k, v in inputs.items()}))
    return CalibrationJob(name="ECLMuPiCNN", input_files=inputs, requested_iov=IoV(EXPERIMENT, 1, EXPERIMENT, 2),
                          expert_config={**ecl_mupi_cnn.settings.expert_config, **SMALL},
                          output_db=LocalDatabase(work_dir / "caf_outputdb_results" / "ECLMuPiCNN").create(),
                          database_chain=chain, work_dir=work_dir, log=logging.getLogger("test.ECLMuPiCNN"))


def _payload(job) -> dict:
    from calibrations._common import calibration_output

    return calibration_output(job.work_dir, "ECLMuPiCNN", "ECLMuPiCNN")


def _validate(job_dir: Path, monkeypatch):
    from calibrations.validations import ecl_mupi_cnn as validation

    monkeypatch.chdir(job_dir)
    return validation.run_validation(str(job_dir), str(job_dir / "input_data.json"), [EXPERIMENT, 1, EXPERIMENT, 2],
                                     VALIDATION)


def test_trained_model_passes_the_validation(mupi, monkeypatch):
    verdict = _validate(mupi["job"].work_dir, monkeypatch)
    assert verdict.passed, verdict.message
    f = verdict.figures
    for thr in ("1MeV", "2MeV", "5MeV"):
        assert f[f"fake_rate_cnn_{thr}"] < f[f"fake_rate_ep_{thr}"]
    assert Path(mupi["job"].work_dir / "ecl_mupi_cnn.png").stat().st_size > 0


def test_untrained_weights_fail_the_validation(mupi, monkeypatch):
    """Same payload layout, freshly initialised weights: the validation must say no."""
    from b2luca.conditions import LocalDatabase
    from b2luca.ml.ecl_cnn import build_model
    from b2luca.ml.model_payload import state_to_arrays

    arrays = dict(_payload(mupi["job"]))
    torch.manual_seed(3)
    for prefix in ("pos", "neg"):
        arrays.update(state_to_arrays(build_model(SMALL["n_maps"], SMALL["hidden"]).state_dict(), prefix))
    bad = mupi["root"] / "bad_job"
    LocalDatabase(bad / "caf_outputdb_results" / "ECLMuPiCNN").create().store("ECLMuPiCNN", arrays,
                                                                             mupi["job"].output_iov)
    (bad / "input_data.json").write_text((mupi["job"].work_dir / "input_data.json").read_text())
    verdict = _validate(bad, monkeypatch)
    assert not verdict.passed
    assert "not below E/p" in verdict.message


def test_payload_round_trip_in_a_fresh_process(mupi, tmp_path):
    """Weights written as a ROOT payload, read back by another interpreter: identical predictions."""
    from b2luca.ml.ecl_cnn import muon_probability
    from b2luca.ml.ecl_images import threshold
    from calibrations.ecl_mupi_cnn import samples

    arrays = _payload(mupi["job"])
    mu, pi = samples(mupi["inputs"], np.asarray(arrays["ecl_constant"]), {"max_chi2_ndf": 5.0})
    here = muon_probability(arrays, mu, threshold(mu.image, 0.002))
    np.savez(tmp_path / "mu.npz", image=mu.image, pt=mu.pt, p=mu.p, charge=mu.charge, ring=mu.ring)
    db = mupi["job"].work_dir / "caf_outputdb_results" / "ECLMuPiCNN"
    code = f"""
import numpy as np
from b2luca.conditions import LocalDatabase
from b2luca.ml.ecl_cnn import muon_probability
from b2luca.ml.ecl_images import TrackImages, threshold
db = LocalDatabase({str(db)!r})
arrays = db.read([e for e in db.entries() if e.name == "ECLMuPiCNN"][-1])
d = np.load({str(tmp_path / 'mu.npz')!r})
n = d["pt"].size
z = np.zeros(n, np.int64)
t = TrackImages(d["image"], d["pt"], d["p"], d["charge"], d["ring"], z, z, z, z, z.astype(np.int8), z, z)
np.save({str(tmp_path / 'there.npy')!r}, muon_probability(arrays, t, threshold(t.image, 0.002)))
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    there = np.load(tmp_path / "there.npy")
    assert here.size > 100 and np.all(np.isfinite(here))
    np.testing.assert_array_equal(here, there)
    # the payload file itself holds no pickle: only numeric arrays and the JSON meta string
    assert all(np.asarray(v).dtype.kind in "biuf" for v in arrays.values())


def test_training_is_deterministic(mupi):
    from b2luca.ml.ecl_cnn import train
    from calibrations.ecl_mupi_cnn import samples, settings

    cfg = {**settings.expert_config, **SMALL, "epochs": 2, "device": "cpu"}
    mu, pi = samples(mupi["inputs"], np.ones(6624), cfg)
    mu, pi = mu.select(np.arange(len(mu)) < 600), pi.select(np.arange(len(pi)) < 600)
    a, _ = train(mu, pi, cfg)
    b, _ = train(mu, pi, cfg)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    c, _ = train(mu, pi, {**cfg, "seed": cfg["seed"] + 1})
    assert not np.array_equal(a["pos_fc1_weight"], c["pos_fc1_weight"])


def test_numpy_inference_is_the_torch_model(mupi):
    """The validation's torch-free forward pass gives the torch module's probabilities (issue 15: no torch
    import in the validation job)."""
    from b2luca.ml.ecl_cnn import load_models, muon_probability
    from b2luca.ml.ecl_images import threshold
    from calibrations.ecl_mupi_cnn import samples

    arrays = _payload(mupi["job"])
    mu, pi = samples(mupi["inputs"], np.asarray(arrays["ecl_constant"]), {"max_chi2_ndf": 5.0})
    models = load_models(arrays)
    for t in (mu, pi):
        image = threshold(t.image, 0.001)
        fast = muon_probability(arrays, t, image)
        assert np.all(np.isfinite(fast)) and fast.std() > 0.01
        np.testing.assert_allclose(fast, muon_probability(arrays, t, image, models), atol=2e-6)
