"""Fixtures for the calibration tests: one tiny simulated bucket shared by the session."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # so `import calibrations.<script>` works as in the native runner
    sys.path.insert(0, str(REPO))

from b2luca.conditions import DatabaseChain, LocalDatabase  # noqa: E402
from b2luca.contract import CalibrationJob  # noqa: E402
from b2luca.iov import ExpRun, IoV  # noqa: E402

EXPERIMENT = 26
RUNS = [1, 2]
SEED = int(os.environ.get("B2LUCA_TEST_SEED", "424242"))  # other seeds: robustness checks
EVENTS = {"hadron_calib": 1000, "mumu_tight_or_highm_calib": 1500, "random_calib": 200, "bhabha_all_calib": 1500,
          "cosmic_calib": 300}


@dataclass
class Bucket:
    """A simulated tiny bucket."""

    data_dir: Path
    conditions_dir: Path
    names: dict[str, str]
    runs: list[int]

    def raw_entries(self, tag: str) -> list[tuple[Path, ExpRun]]:
        return [(p, ExpRun(EXPERIMENT, run)) for run in self.runs
                for p in sorted((self.data_dir / f"e{EXPERIMENT:04d}" / f"r{run:05d}" / tag).glob("*.root"))]

    def db(self, role: str) -> LocalDatabase:
        return LocalDatabase(self.conditions_dir / self.names[role])

    @property
    def truth(self) -> DatabaseChain:
        return DatabaseChain([self.db("truth")])

    @property
    def nominal(self) -> DatabaseChain:
        return DatabaseChain([self.db("nominal")])

    @property
    def iov(self) -> IoV:
        return IoV(EXPERIMENT, min(self.runs), EXPERIMENT, max(self.runs))


@pytest.fixture(scope="session")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Bucket:
    from b2luca.sim import simulate_bucket

    root = tmp_path_factory.mktemp("bucket")
    summary = simulate_bucket(bucket="tiny", experiment=EXPERIMENT, runs=RUNS, seed=SEED, events=EVENTS,
                              data_dir=root / "raw", conditions_dir=root / "conditions")
    return Bucket(root / "raw", root / "conditions", dict(summary.global_tags), list(RUNS))


def make_job(script, bucket: Bucket, work_dir: Path, input_files: dict[str, list[tuple[Path, ExpRun]]],
             chain: DatabaseChain | None = None, overrides: dict | None = None) -> CalibrationJob:
    """A CalibrationJob as the native runner builds it, plus caf_config.json / input_data.json in work_dir."""
    settings = script.settings
    name = settings.name
    work_dir.mkdir(parents=True, exist_ok=True)
    out = LocalDatabase(work_dir / "caf_outputdb_results" / name).create()
    config = {**settings.expert_config, **(overrides or {})}
    (work_dir / "caf_config.json").write_text(json.dumps({
        "caf_script": str(Path(script.__file__)), "database_chain": [], "backend_args": {},
        "requested_iov": [bucket.iov.exp_low, bucket.iov.run_low, -1, -1], "expert_config": config}))
    (work_dir / "input_data.json").write_text(json.dumps(
        {k: [[str(p), er.as_list()] for p, er in v] for k, v in input_files.items()}))
    return CalibrationJob(name=name, input_files=input_files,
                          requested_iov=IoV(bucket.iov.exp_low, bucket.iov.run_low, -1, -1), expert_config=config,
                          output_db=out, database_chain=chain if chain is not None else bucket.nominal,
                          work_dir=work_dir, log=logging.getLogger(f"test.{name}"))


@pytest.fixture
def job_factory():
    """make_job as a fixture (tests call job_factory(script, bucket, work_dir, input_files, ...))."""
    return make_job


def load(name: str):
    """Import calibrations/<name>.py or calibrations/validations/<name>.py (``validations.x``)."""
    import importlib

    return importlib.import_module(f"calibrations.{name}")


@pytest.fixture
def script():
    return load


@pytest.fixture(scope="session")
def cdst(bucket: Bucket) -> Path:
    """cDSTs of the tiny bucket, produced with the truth constants (a perfect raw-stage calibration)."""
    from b2luca.production import produce_run

    root = bucket.data_dir.parent / "cdst"
    for run in bucket.runs:
        rel = Path(f"e{EXPERIMENT:04d}") / f"r{run:05d}"
        # only the data tags the cDST calibrations read (keeps the fixture fast)
        raw = bucket.data_dir.parent / "raw_cdst_tags" / rel
        raw.mkdir(parents=True)
        for tag in ("mumu_tight_or_highm_calib", "bhabha_all_calib"):
            (raw / tag).symlink_to(bucket.data_dir / rel / tag, target_is_directory=True)
        produce_run(raw, root / rel, bucket.truth, ExpRun(EXPERIMENT, run))
    return root


def cdst_entries(root: Path, runs: list[int], tag: str) -> list[tuple[Path, ExpRun]]:
    """input_files entries of the cDST files of one data tag."""
    return [(p, ExpRun(EXPERIMENT, run)) for run in runs
            for p in sorted((root / f"e{EXPERIMENT:04d}" / f"r{run:05d}" / tag).glob("cdst_*.root"))]


@pytest.fixture
def cdst_files(cdst: Path, bucket: Bucket):
    """cdst_files(tag) -> input_files entries of the session's cDSTs."""
    return lambda tag: cdst_entries(cdst, bucket.runs, tag)
