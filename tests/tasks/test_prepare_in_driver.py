"""With several luigi workers (one forked process per task), a task's ``prepare_in_driver`` runs in the driver
before its fork, so what it reads there is inherited by the task's process (issue 15: fixed cost per task)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import luigi
import numpy as np
import pytest

from b2luca.conditions import DatabaseChain, LocalDatabase
from b2luca.conditions import database as database_module
from b2luca.iov import ExpRun, IoV
from b2luca.production import warm_constants
from b2luca.reco import geometry
from b2luca.rundb import write_snapshot
from b2luca.tasks import calibration
from b2luca.tasks.driver import PreparingWorker, RecordingFactory, configure_luigi

#: filled by prepare_in_driver: task index -> pid of the process that prepared it
PREPARED: dict[int, int] = {}


class Probe(luigi.Task):
    """Writes whether its own process sees what prepare_in_driver put into PREPARED (and which process did)."""

    index = luigi.IntParameter()
    out_dir = luigi.Parameter()
    fail_prepare = luigi.BoolParameter(default=False)

    def prepare_in_driver(self) -> None:
        if self.fail_prepare:
            raise RuntimeError("cannot prepare")
        PREPARED[int(self.index)] = os.getpid()

    def output(self):
        return luigi.LocalTarget(str(Path(self.out_dir) / f"probe-{self.index}.json"))

    def run(self):
        with self.output().open("w") as handle:
            json.dump({"pid": os.getpid(), "prepared_by": PREPARED.get(int(self.index))}, handle)


#: pids of the processes that ran a Wrapper
WRAPPERS_RAN_IN: list[int] = []


class Wrapper(luigi.WrapperTask):
    """Requires the probes; records which process ran it."""

    out_dir = luigi.Parameter()

    def requires(self):
        return [Probe(index=i, out_dir=self.out_dir) for i in range(3)]

    def run(self):
        WRAPPERS_RAN_IN.append(os.getpid())


def test_wrapper_tasks_run_in_the_driver_with_several_workers(tmp_path):
    configure_luigi(tmp_path / "luigi.log")
    WRAPPERS_RAN_IN.clear()
    result = luigi.build([Wrapper(out_dir=str(tmp_path))], workers=2, local_scheduler=True, detailed_summary=True,
                         worker_scheduler_factory=RecordingFactory())
    assert result.status.name == "SUCCESS", result.summary_text
    assert WRAPPERS_RAN_IN == [os.getpid()]  # not forked (a fork's append would not show here)
    assert all(json.loads((tmp_path / f"probe-{i}.json").read_text())["pid"] != os.getpid() for i in range(3))


def _build(tmp_path: Path, workers: int, **params) -> list[dict]:
    PREPARED.clear()
    configure_luigi(tmp_path / "luigi.log")  # b2luca run's worker timing (luigi's default polls every 1-6 s)
    factory = RecordingFactory()
    tasks = [Probe(index=i, out_dir=str(tmp_path), **params) for i in range(3)]
    result = luigi.build(tasks, workers=workers, local_scheduler=True, detailed_summary=True,
                         worker_scheduler_factory=factory)
    assert result.status.name == "SUCCESS", result.summary_text
    return [json.loads((tmp_path / f"probe-{i}.json").read_text()) for i in range(3)]


def test_the_factory_makes_the_preparing_worker():
    factory = RecordingFactory()
    with factory.create_worker(factory.create_local_scheduler(), 1) as worker:
        assert isinstance(worker, PreparingWorker)


def test_forked_task_processes_inherit_what_the_driver_prepared(tmp_path):
    rows = _build(tmp_path, workers=2)
    for row in rows:
        assert row["pid"] != os.getpid()  # the task ran in its own forked process ...
        assert row["prepared_by"] == os.getpid()  # ... and saw what this process prepared before the fork


def test_one_worker_prepares_nothing(tmp_path):
    rows = _build(tmp_path, workers=1)  # the tasks run in this process: nothing to hand over
    assert all(row["pid"] == os.getpid() and row["prepared_by"] is None for row in rows)
    assert PREPARED == {}


def test_a_failing_preparation_does_not_fail_the_task(tmp_path):
    rows = _build(tmp_path, workers=2, fail_prepare=True)
    assert all(row["prepared_by"] is None for row in rows)


def test_warm_constants_fills_the_verified_payload_cache(tmp_path):
    db = LocalDatabase(tmp_path / "db").create()
    entry = db.store("BeamSpot", {"position": np.arange(3.0)}, IoV(0, 0))
    database_module._VERIFIED.clear()
    geometry.nominal_geometry.cache_clear()
    assert warm_constants(DatabaseChain([db]), ExpRun(0, 5)) == 1  # the chain has only BeamSpot
    assert [key[0] for key in database_module._VERIFIED] == [str(entry.path)]
    assert geometry.nominal_geometry.cache_info().currsize == 1


def test_calibration_prepare_parses_the_snapshot_once(tmp_path, monkeypatch):
    path = tmp_path / "snapshot.csv"
    write_snapshot([{"experiment": 26, "run": 1, "data_tags": "mumu_calib"}], path)

    class Ctx:  # what prepare uses of a BucketContext
        class cfg:
            class rundb:
                snapshot = path

    calibration._snapshot.cache_clear()
    calibration.prepare(Ctx)  # type: ignore[arg-type]
    assert calibration._snapshot.cache_info().currsize == 1
    calls: list[Path] = []
    monkeypatch.setattr(calibration, "read_snapshot", lambda p: calls.append(p))
    assert list(calibration.snapshot(path)["run"]) == [1] and calls == []  # from the cache prepare filled
    path.unlink()
    calibration.prepare(Ctx)  # type: ignore[arg-type]  # not there yet (MakeRunDB has not run): nothing, no error


@pytest.fixture(autouse=True)
def _clean_caches():
    yield
    calibration._snapshot.cache_clear()
    database_module._VERIFIED.clear()
