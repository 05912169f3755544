"""Issue 17 items 6-8 through the real DAG and native runner: the cause of a failed calibration on its
console line, an undeclared payload dependency stopping a calibration, and an idempotent --rerun."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from b2luca.config import load_config
from b2luca.tasks.driver import run_bucket

from bucket_helpers import copy_calibrations

pytestmark = pytest.mark.slow

SETTINGS = '''
from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

settings = CalibrationSettings(name="{name}", expert_username="tester", subsystem="svd",
                               description="test calibration", input_data_formats=["raw"],
                               input_data_names=["hadron_calib"],
                               input_data_filters={{"hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]]}},
                               depends_on=[], expert_config={{}}, produced_payloads=["{name}Constant"])
'''

READER = '''
def calibrate(job):
    import numpy as np
    from b2luca.iov import ExpRun

    run = ExpRun(job.requested_iov.exp_low, job.requested_iov.run_low)
    offsets = job.database_chain.read_or_none("SVDTimeOffsets", run)  # not declared in depends_on
    job.output_db.store("SVDReaderConstant", {"value": np.array([0.0 if offsets is None else 1.0])}, job.output_iov)
'''

BROKEN_DB = '''
def calibrate(job):
    from b2luca.conditions import LocalDatabase

    LocalDatabase(job.work_dir / "private_db").entries()  # a database.txt with a garbage line
'''


def _add_script(calibrations: Path, stem: str, name: str, body: str) -> None:
    (calibrations / f"{stem}.py").write_text(SETTINGS.format(name=name) + textwrap.dedent(body))


def test_failure_lines_carry_their_cause(simulated_bucket, tmp_path: Path):
    calibrations = copy_calibrations(tmp_path)
    _add_script(calibrations, "svd_reader", "SVDReader", READER)
    _add_script(calibrations, "broken_db", "BrokenDB", BROKEN_DB)
    cfg = load_config(simulated_bucket.config(tmp_path, calibrations=calibrations))
    db = cfg.work_dir / "calibrations" / "BrokenDB" / "private_db"
    db.mkdir(parents=True)
    (db / "database.txt").write_text("dbstore/X 1 0,0,-1,-1\nthis is not a payload line\n")

    lines: list[str] = []
    outcome = run_bucket(cfg, only="BrokenDB", echo=lines.append)
    assert outcome.exit_code == 1
    line = next(text for text in lines if text.strip().startswith("BrokenDB: failed"))
    assert ("CalibrationFailed: calibration script exited with code 1: b2luca.errors.DatabaseError: "
            f"{db / 'database.txt'}:2: expected") in line, line
    row = next(r for r in outcome.rows if r.name == "BrokenDB")
    assert "DatabaseError" in row.cause
    report = (cfg.work_dir / "report" / "issues" / "BrokenDB.md").read_text()
    assert "DatabaseError" in report

    lines.clear()
    outcome = run_bucket(cfg, only="SVDReader", echo=lines.append)
    assert outcome.exit_code == 1
    line = next(text for text in lines if text.strip().startswith("SVDReader: failed"))
    assert ("UndeclaredDependencyError: SVDReader read payloads of this bucket from calibrations it does not "
            "depend on: SVDTimeOffsets (produced by SVDTimeOffsets)") in line, line
    prompt = (cfg.conditions.directory / cfg.conditions.prompt_global_tag / "database.txt").read_text()
    assert "SVDReaderConstant" not in prompt  # nothing published
    assert not (cfg.work_dir / "calibrations" / "SVDReader" / "result.json").exists()


def test_rerun_with_unchanged_inputs_stores_no_new_revision(simulated_bucket, tmp_path: Path):
    cfg = load_config(simulated_bucket.config(tmp_path, select=["CDCTimeZeros"]))
    assert run_bucket(cfg, only="CDCTimeZeros", echo=lambda _: None).exit_code == 0
    database = cfg.conditions.directory / cfg.conditions.prompt_global_tag / "database.txt"
    before = database.read_text()
    assert "dbstore/CDCTimeZeros 1 " in before
    lines: list[str] = []
    outcome = run_bucket(cfg, only="CDCTimeZeros", rerun=["CDCTimeZeros"], echo=lines.append)
    assert outcome.exit_code == 0, "\n".join(lines)
    assert "invalidated: CDCTimeZeros" in lines
    assert database.read_text() == before  # same content: the existing revision stands
