"""Fast unit tests of the task graph's logic, with task outputs written by hand instead of running tasks:
``--rerun`` invalidation, ``--dry-run`` explanations, status rows, group ordering, ``req``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import luigi
import pytest

from b2luca.dataset import production_runs
from b2luca.enums import Stage, TaskStatus
from b2luca.errors import CatalogueError
from b2luca.payload_deps import PRODUCTION_READS
from b2luca.tasks import (ArchiveLogs, Bucket, CalibrationTask, CdstProduction, CopyLocalPayloads, GroupTask,
                          RunRawCalibrations)
from b2luca.tasks.context import BucketContext, context_for
from b2luca.tasks.driver import (_dry_run, _walk, collect_rows, invalidate, rerun_closure, reruns_raw,
                                 status_rows)

RAW = ["CDCTimeZeros", "PXDBackgroundGAN", "PXDHotDeadPixels", "SVDTimeOffsets", "VXDCDCAlignment"]
CDST_GROUPS = [["BeamSpot", "ECLCrystalEnergy"], ["ECLMuPiCNN"]]  # ECLMuPiCNN needs ECLCrystalEnergy
CDST = [name for group in CDST_GROUPS for name in group]
RUNS = [1, 2, 3]


def _fake_raw_data(cfg_path: Path, runs: list[int] = RUNS) -> None:
    """The directory layout production_runs looks for (empty ROOT files: nothing reads them here)."""
    from b2luca.config import load_config

    cfg = load_config(cfg_path)
    for run in runs:
        tag = cfg.data.raw_directory / f"e{cfg.bucket.experiment:04d}" / f"r{run:05d}" / "hadron_calib"
        tag.mkdir(parents=True, exist_ok=True)
        (tag / "raw.root").write_bytes(b"")


@pytest.fixture
def ctx(bucket_config) -> BucketContext:
    """The context of a demo-like bucket with three runs of (fake) raw data, one production task per run
    (``production_task_mb: 0``); nothing has run."""
    path = bucket_config(changes={"data.production_task_mb": 0})
    _fake_raw_data(path)
    context_for.cache_clear()
    return context_for(str(path))


def _write(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def _finish(ctx: BucketContext, name: str, status: str = TaskStatus.SUCCESS, duration: float = 2.5) -> None:
    _write(ctx.result_path(name), {"name": name, "status": status, "duration": duration})


def _complete_everything(ctx: BucketContext) -> None:
    """Write every task's output as if the whole bucket had run."""
    for task in _walk([Bucket(config_path=str(ctx.cfg.path))]):
        if isinstance(task, luigi.WrapperTask):
            continue
        if isinstance(task, CalibrationTask):
            _finish(ctx, task.name)
        else:
            _write(Path(task.output_path()), {"duration": 1.0, "location": "somewhere"})


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- --rerun ------------------------------------------------------------------------------------------
def test_rerun_closure_raw_calibration_takes_its_dependents_and_the_whole_cdst_stage(ctx):
    plan = ctx.plan
    assert rerun_closure(plan, ["CDCTimeZeros"]) == ["CDCTimeZeros", "VXDCDCAlignment", *CDST]
    # VXDCDCAlignment depends on CDCTimeZeros, SVDTimeOffsets and PXDHotDeadPixels (issue 17B)
    assert rerun_closure(plan, ["PXDHotDeadPixels"]) == ["PXDHotDeadPixels", "VXDCDCAlignment", *CDST]
    assert rerun_closure(plan, ["BeamSpot"]) == ["BeamSpot"]
    assert rerun_closure(plan, ["BeamSpot", "CDCTimeZeros", "BeamSpot"]) == [
        "BeamSpot", "CDCTimeZeros", "VXDCDCAlignment", "ECLCrystalEnergy", "ECLMuPiCNN"]
    assert reruns_raw(plan, ["BeamSpot", "SVDTimeOffsets"]) and not reruns_raw(plan, CDST)
    with pytest.raises(CatalogueError):
        rerun_closure(plan, ["NoSuchCalibration"])


def test_invalidate_raw_calibration_keeps_history_and_forgets_production_and_archives(ctx):
    _complete_everything(ctx)
    work = ctx.work_dir
    assert invalidate(ctx, ["VXDCDCAlignment"]) == ["VXDCDCAlignment", *CDST]
    for name in ["VXDCDCAlignment", *CDST]:
        assert not ctx.result_path(name).exists()
        history = list((ctx.calibration_dir(name) / "history").glob("result-*.json"))
        assert len(history) == 1 and json.loads(history[0].read_text())["name"] == name
    for name in ["CDCTimeZeros", "PXDHotDeadPixels", "SVDTimeOffsets"]:
        assert ctx.result_path(name).is_file()
    assert not list((work / "cdst_production").glob("r*.json"))  # every production runs again
    archives = {p.stem for p in (work / "archive").glob("*.json")}
    assert archives == {"local", "raw-0"}  # raw-1, cdst_production and cdst-0 are archived again


def test_invalidate_cdst_calibration_leaves_production_alone(ctx):
    _complete_everything(ctx)
    assert invalidate(ctx, ["ECLCrystalEnergy"]) == ["ECLCrystalEnergy", "ECLMuPiCNN"]
    assert ctx.result_path("BeamSpot").is_file() and not ctx.result_path("ECLCrystalEnergy").exists()
    assert not ctx.result_path("ECLMuPiCNN").exists()
    assert len(list((ctx.work_dir / "cdst_production").glob("r*.json"))) == len(RUNS)
    assert {p.stem for p in (ctx.work_dir / "archive").glob("*.json")} == {"local", "raw-0", "raw-1",
                                                                          "cdst_production"}


# --- --dry-run -----------------------------------------------------------------------------------------
def _dry(ctx: BucketContext, rerun: list[str] = ()) -> dict[str, tuple[str, str]]:
    lines: list[str] = []
    outcome = _dry_run(ctx, [Bucket(config_path=str(ctx.cfg.path))], list(rerun), lines.append, 0.0)
    assert outcome.exit_code == 0 and outcome.luigi_status == "DRY_RUN"
    return {row.name: (row.state, row.report) for row in outcome.rows}


def test_dry_run_of_a_fresh_bucket_explains_every_task(ctx):
    before = _tree(ctx.work_dir) if ctx.work_dir.exists() else {}
    rows = _dry(ctx)
    assert {state for state, _ in rows.values()} == {TaskStatus.WOULD_RUN}
    assert rows["PullSettings"][1] == f"output missing: {ctx.settings_file}"
    assert rows["VXDCDCAlignment"][1] == "output missing; after PullSettings, MakeRunDB, LocalPXD:staging_pxd_demo ..."
    assert rows["CdstProduction:r00002"][1].startswith("output missing; after ")
    assert set(rows) >= {"LocalPXD:staging_pxd_demo", "ArchiveLogs:cdst_production", *RAW, *CDST}
    assert (_tree(ctx.work_dir) if ctx.work_dir.exists() else {}) == before  # changes nothing


def test_dry_run_names_the_upstream_tasks_that_would_run_first(ctx):
    _complete_everything(ctx)
    for name in ["CDCTimeZeros", "VXDCDCAlignment", *CDST]:
        ctx.result_path(name).unlink()
    rows = _dry(ctx)
    assert rows["CDCTimeZeros"] == (TaskStatus.WOULD_RUN, f"output missing: {ctx.result_path('CDCTimeZeros')}")
    assert rows["VXDCDCAlignment"] == (TaskStatus.WOULD_RUN, "output missing; after CDCTimeZeros")
    assert rows["SVDTimeOffsets"] == (TaskStatus.DONE, "complete (output exists)")
    # the productions are complete: the cdst calibrations wait for nothing that would run
    assert rows["BeamSpot"] == (TaskStatus.WOULD_RUN, f"output missing: {ctx.result_path('BeamSpot')}")


def test_dry_run_with_rerun_names_what_the_rerun_invalidates(ctx):
    _complete_everything(ctx)
    before = _tree(ctx.work_dir)
    rows = _dry(ctx)
    assert all(state == TaskStatus.DONE and why == "complete (output exists)" for state, why in rows.values())
    rows = _dry(ctx, ["SVDTimeOffsets"])
    forced = {name for name, (state, why) in rows.items() if why == "--rerun invalidates it"}
    assert forced == {"SVDTimeOffsets", "VXDCDCAlignment", *CDST, *(f"CdstProduction:r{run:05d}" for run in RUNS)}
    assert all(rows[name][0] == TaskStatus.WOULD_RUN for name in forced)
    assert rows["CDCTimeZeros"] == (TaskStatus.DONE, "complete (output exists)")
    assert _tree(ctx.work_dir) == before


# --- status rows -------------------------------------------------------------------------------------
def test_status_rows_from_outputs_on_disk_and_the_last_run(ctx):
    rows = {row.name: row for row in status_rows(ctx.cfg)}
    assert {row.state for row in rows.values()} == {TaskStatus.PENDING}
    assert (rows["CDCTimeZeros"].kind, rows["CDCTimeZeros"].stage, rows["CDCTimeZeros"].group) == (
        "calibration", Stage.RAW, "raw-0")
    assert (rows["BeamSpot"].stage, rows["BeamSpot"].group) == (Stage.CDST, "cdst-0")
    assert (rows["CdstProduction:r00003"].kind, rows["CdstProduction:r00003"].group) == (
        "cdst_production", "cdst_production")
    assert rows["ArchiveLogs:raw-1"].kind == "archive" and rows["MakeRunDB"].kind == "setup"

    _finish(ctx, "CDCTimeZeros", duration=4.0)
    _finish(ctx, "PXDHotDeadPixels", status=TaskStatus.VALIDATION_FAILED)
    _finish(ctx, "ECLCrystalEnergy", status=TaskStatus.VETOED)
    _write(ctx.work_dir / "status.json", {"rows": [
        {"name": "SVDTimeOffsets", "state": "failed", "duration": 7.0},
        {"name": "VXDCDCAlignment", "state": "not run (upstream failed)", "duration": None}]})
    rows = {row.name: row for row in status_rows(ctx.cfg)}
    assert (rows["CDCTimeZeros"].state, rows["CDCTimeZeros"].duration) == (TaskStatus.SUCCESS, 4.0)
    assert rows["CDCTimeZeros"].report.endswith(".md")
    assert rows["PXDHotDeadPixels"].state == TaskStatus.VALIDATION_FAILED
    assert rows["ECLCrystalEnergy"].state == TaskStatus.VETOED
    assert (rows["SVDTimeOffsets"].state, rows["SVDTimeOffsets"].duration) == (TaskStatus.FAILED, 7.0)
    assert rows["VXDCDCAlignment"].state == TaskStatus.UPSTREAM_FAILED
    assert rows["BeamSpot"].state == TaskStatus.PENDING


def test_collect_rows_of_a_run_that_found_everything_done(ctx):
    _complete_everything(ctx)
    _finish(ctx, "BeamSpot", status=TaskStatus.VALIDATION_FAILED)
    _finish(ctx, "ECLCrystalEnergy", status=TaskStatus.VETOED)
    rows = {row.name: row for row in collect_rows(ctx, [Bucket(config_path=str(ctx.cfg.path))], records={})}
    assert rows["CDCTimeZeros"].state == TaskStatus.DONE_BEFORE
    assert rows["ECLCrystalEnergy"].state == TaskStatus.DONE_BEFORE_VETOED
    assert rows["BeamSpot"].state == TaskStatus.DONE_BEFORE_VALIDATION_FAILED
    assert rows["ArchiveLogs:raw-0"].report == "somewhere"


# --- the graph ----------------------------------------------------------------------------------------
def test_groups_run_in_dependency_order_and_requirements_come_first(ctx):
    config = str(ctx.cfg.path)
    plan = ctx.plan
    assert plan.stage(Stage.RAW).groups == [["CDCTimeZeros", "PXDBackgroundGAN", "PXDHotDeadPixels", "SVDTimeOffsets"],
                                            ["VXDCDCAlignment"]]
    assert plan.stage(Stage.CDST).groups == CDST_GROUPS
    for stage in (Stage.RAW, Stage.CDST):
        for level, group in enumerate(plan.stage(stage).groups):
            task = GroupTask(config_path=config, stage=stage, level=level)
            assert [t.name for t in task.requires()] == group
            for name in group:  # a calibration's dependencies are in earlier groups
                for dep in ctx.catalogue[name].depends_on:
                    dep_stage, dep_level = plan.group_of(dep)
                    assert (dep_stage, dep_level) < (stage, level) or dep_stage == Stage.RAW
    order = {task.task_id: index for index, task in enumerate(_walk([Bucket(config_path=config)]))}
    for task in _walk([Bucket(config_path=config)]):
        for dep in luigi.task.flatten(task.requires()):
            assert order[dep.task_id] < order[task.task_id]


def test_production_requires_exactly_the_calibrations_whose_payloads_it_reads(ctx):
    """cDST production waits for the raw calibrations producing a payload reconstruction reads (and the
    setup), nothing else: the GAN runs beside it; the cDST calibrations wait for every production."""
    config = str(ctx.cfg.path)
    assert production_runs(ctx.cfg) == RUNS
    beam = CalibrationTask(config_path=config, name="BeamSpot")
    productions = [t for t in beam.requires() if isinstance(t, CdstProduction)]
    assert [t.run_number for t in productions] == RUNS
    readers = {name for name in RAW if set(ctx.catalogue[name].settings.produced_payloads) & set(PRODUCTION_READS)}
    assert readers == {"CDCTimeZeros", "PXDHotDeadPixels", "SVDTimeOffsets", "VXDCDCAlignment"}
    for production in productions:
        required = production.requires()
        assert {t.name for t in required if isinstance(t, CalibrationTask)} == readers
        assert {type(t).__name__ for t in required if not isinstance(t, CalibrationTask)} == {
            "PullSettings", "MakeRunDB", "LocalCalibrations"}
    # the GAN is reached from the bucket only through its raw group's archive, never through production
    gan = CalibrationTask(config_path=config, name="PXDBackgroundGAN")
    assert gan not in _walk(productions) and gan not in _walk([beam])
    assert gan in _walk([RunRawCalibrations(config_path=config)]) and gan in _walk([Bucket(config_path=config)])
    assert [t.group for t in RunRawCalibrations(config_path=config).requires()] == ["raw-0", "raw-1"]
    assert ArchiveLogs(config_path=config, group="raw-1").requires() == GroupTask(config_path=config,
                                                                                  stage="raw", level=1)
    raw = CalibrationTask(config_path=config, name="VXDCDCAlignment")
    assert not any(isinstance(t, CdstProduction) for t in raw.requires())
    assert CalibrationTask(config_path=config, name="CDCTimeZeros") in raw.requires()


def test_a_calibration_waits_for_what_it_depends_on_not_for_the_group_before(ctx):
    """The alignment (raw-1) waits for its three dependencies, not for the GAN of raw-0: a payload of a
    calibration it does not depend on is an undeclared read (b2luca.payload_deps) anyway."""
    _complete_everything(ctx)
    config = str(ctx.cfg.path)
    align = CalibrationTask(config_path=config, name="VXDCDCAlignment")
    assert not any(isinstance(t, GroupTask) for t in align.requires())
    assert {t.name for t in align.requires() if isinstance(t, CalibrationTask)} == {
        "CDCTimeZeros", "PXDHotDeadPixels", "SVDTimeOffsets"}
    assert not any(isinstance(t, GroupTask) for t in CalibrationTask(config_path=config, name="BeamSpot").requires())
    for name in ["PXDHotDeadPixels", "VXDCDCAlignment"]:
        ctx.result_path(name).unlink()
    rows = _dry(ctx)
    assert rows["VXDCDCAlignment"] == (TaskStatus.WOULD_RUN, "output missing; after PXDHotDeadPixels")
    ctx.result_path("PXDHotDeadPixels").write_text(json.dumps({"name": "PXDHotDeadPixels", "status": "success"}))
    ctx.result_path("PXDBackgroundGAN").unlink()
    rows = _dry(ctx)  # the GAN's absence holds nothing else back
    assert rows["VXDCDCAlignment"][0] == TaskStatus.WOULD_RUN and "after" not in rows["VXDCDCAlignment"][1]


def test_req_copies_the_shared_parameters(ctx):
    config = str(ctx.cfg.path)
    archive = ArchiveLogs(config_path=config, group="local")
    copy = CopyLocalPayloads.req(archive, subsystem="PXD", source_tag="staging_pxd_demo")
    assert copy == CopyLocalPayloads(config_path=config, subsystem="PXD", source_tag="staging_pxd_demo")
    assert copy.task_name == "LocalPXD:staging_pxd_demo"
    assert ArchiveLogs.req(archive).group == "local"  # own parameters copied too
    assert ArchiveLogs.req(archive, group="raw-0").group == "raw-0"  # given ones win
    assert CdstProduction.req(archive, run_number=4).task_name == "CdstProduction:r00004"


def test_work_modules_hold_no_task_classes():
    """Declaration and work are split: the work modules define plain functions, no luigi task."""
    import importlib
    import inspect

    for module in ("setup", "local", "calibration", "cdst", "archive", "reporting"):
        mod = importlib.import_module(f"b2luca.tasks.{module}")
        assert not [name for name, obj in vars(mod).items()
                    if inspect.isclass(obj) and issubclass(obj, luigi.Task)], module


def test_result_paths_are_per_calibration(ctx):
    assert ctx.result_path("BeamSpot") == ctx.work_dir / "calibrations" / "BeamSpot" / "result.json"
    assert os.fspath(CalibrationTask(config_path=str(ctx.cfg.path), name="BeamSpot").output_path()) == \
        os.fspath(ctx.result_path("BeamSpot"))


def test_a_bucket_task_without_output_path_cannot_be_made() -> None:
    """output_path() is abstract: a task that forgets it fails when it is created, not when luigi asks it."""
    from b2luca.tasks.base import BucketTask

    class NoOutput(BucketTask):
        pass

    with pytest.raises(TypeError, match="output_path"):
        NoOutput(config_path="bucket.yaml")


def test_a_local_native_run_has_a_job_server_a_batch_run_none(bucket_config):
    """Native jobs of a local run fork from the run's job server; batch jobs start their own processes."""
    import dataclasses

    from b2luca.config import load_config
    from b2luca.enums import BatchSystem
    from b2luca.runners import job_server
    from b2luca.tasks.context import BucketContext
    from b2luca.tasks.driver import _job_server

    cfg = load_config(bucket_config())
    ctx = BucketContext(cfg)
    with _job_server(cfg, ctx) as address:
        assert address is not None and job_server.current_address() == address
    assert job_server.current_address() is None
    batch = dataclasses.replace(cfg, batch=dataclasses.replace(cfg.batch, system=BatchSystem.SLURM))
    with _job_server(batch, ctx) as address:
        assert address is None and job_server.current_address() is None
