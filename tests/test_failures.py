"""Issue 17 item 6: a failure's one-line cause, from an exception, from luigi, from a script's log."""

from __future__ import annotations

import errno
from pathlib import Path

import luigi

from b2luca.cli import main
from b2luca.dataset import MARKER
from b2luca.errors import ProductionError
from b2luca.failures import MAX_CAUSE, cause_from_expl, cause_from_log, cause_line
from b2luca.tasks.base import BucketTask
from b2luca.tasks.driver import RecordingFactory

from bucket_helpers import make_bucket

PY_LOG = """$ python -m b2luca.runners.native_job calibrate caf_config.json input_data.json
2026-12-07 02:00:00 INFO b2luca.calibration.X: calibrating X
Traceback (most recent call last):
  File "/x/native_job.py", line 130, in main
    do_calibrate(args.caf_config, args.input_data)
  File "/x/database.py", line 62, in parse_database_txt
    raise DatabaseError(f"{path}:{number}: expected ...")
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
b2luca.errors.DatabaseError: /db/database.txt:3: expected 'dbstore/<Name> <revision> e1,r1,e2,r2', got 'junk'
"""


def test_cause_from_a_python_traceback_log(tmp_path: Path):
    log = tmp_path / "calibrate.log"
    log.write_text(PY_LOG)
    assert cause_from_log(log) == ("b2luca.errors.DatabaseError: /db/database.txt:3: expected "
                                   "'dbstore/<Name> <revision> e1,r1,e2,r2', got 'junk'")


def test_cause_from_a_basf2_log_and_from_nothing(tmp_path: Path):
    log = tmp_path / "basf2.log"
    log.write_text("[INFO] start\n[FATAL] Could not open conditions database: HTTP 503\n[INFO] exiting\n")
    assert cause_from_log(log) == "[FATAL] Could not open conditions database: HTTP 503"
    log.write_text("all fine\n")
    assert cause_from_log(log) == "" and cause_from_log(tmp_path / "missing.log") == ""


def test_cause_line_is_one_short_line():
    assert cause_line(ValueError("first\nsecond")) == "ValueError: first"
    assert cause_line(KeyError()) == "KeyError"
    assert len(cause_line(RuntimeError("x" * 5000))) <= MAX_CAUSE + len("RuntimeError: ")
    assert cause_from_expl('"ProductionError: disk full\\nRuntime error:\\nTraceback ..."') == "ProductionError: disk full"


class Exploding(BucketTask):
    """A task failing the way cDST production fails on a full disk."""

    def output_path(self) -> Path:
        return Path(self.config_path).parent / "never-written.json"

    def run(self) -> None:
        raise ProductionError("run 3: cannot write cdst_r00003.root: [Errno 28] No space left on device")


def test_scheduler_records_the_cause_of_a_failed_task(tmp_path: Path):
    """The cause reaches the driver the way luigi reports failures (worker -> scheduler), not via luigi.log."""
    task = Exploding(config_path=str(tmp_path / "bucket.yaml"))
    factory = RecordingFactory()
    luigi.build([task], local_scheduler=True, worker_scheduler_factory=factory, detailed_summary=True)
    record = factory.scheduler.records[task.task_id]
    assert record.status == "FAILED"
    assert record.cause == "ProductionError: run 3: cannot write cdst_r00003.root: [Errno 28] No space left on device"


def test_disk_full_during_simulation_is_one_clear_line(tmp_path: Path, monkeypatch, capsys):
    import b2luca.sim.simulate as simulate

    real = simulate.write_raw
    calls = []

    def write_until_full(path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # the disk fills up at the third raw file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(simulate, "write_raw", write_until_full)
    config = make_bucket(tmp_path, events={"cosmic_calib": 5, "mumu_tight_or_highm_calib": 5, "hadron_calib": 5,
                                           "bhabha_all_calib": 5, "random_calib": 5})
    assert main(["simulate", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("b2luca: error: simulation of bucket demo into ") and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "data" / MARKER).exists()  # not marked complete: a rerun simulates again
