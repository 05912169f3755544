"""One prompt calibration, in the five steps of DESIGN §1 (the work of
:class:`~b2luca.tasks.graph.CalibrationTask`).

Steps, each visible in the calibration's work dir and in its report:
(a) ``caf_config.json``, (b) ``input_data.json``, (c) the calibration script through the runner,
(d) its validation script, then the payloads go to the prompt global tag (only when the validation
passed and the update/veto rule of :mod:`b2luca.conditions.promote` lets them), and (e) ``result.json`` — the task's output, written last and atomically.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import pandas as pd

from ..atomic import write_json_atomic
from ..catalogue import CalibrationInfo
from ..catalogue.prompt_api import FilterVocabulary, using_vocabulary
from ..conditions import LocalDatabase
from ..conditions.promote import promote_payloads
from ..contract import Verdict
from ..dataset import build_input_data
from ..enums import OnValidationFailure, Stage, TaskStatus
from ..errors import CalibrationFailed
from ..failures import cause_from_log
from ..payload_deps import READS_FILE, check_reads
from ..rundb import read_snapshot
from ..runners import output_database, runner_for
from .context import BucketContext, read_json
from .reporting import Report, reported

# The outcomes a finished calibration records in result.json (names kept for code that imports them).
STATUS_SUCCESS, STATUS_VALIDATION_FAILED = TaskStatus.SUCCESS, TaskStatus.VALIDATION_FAILED
STATUS_VETOED = TaskStatus.VETOED

T = TypeVar("T")


def calibration_result(ctx: BucketContext, name: str) -> dict[str, Any] | None:
    """The result.json of a finished calibration, or None."""
    path = ctx.result_path(name)
    return read_json(path) if path.is_file() else None


def run_calibration(ctx: BucketContext, name: str) -> None:
    """Run calibration ``name`` unless another process finished it meanwhile; its result.json comes last."""
    work = ctx.calibration_dir(name)
    work.mkdir(parents=True, exist_ok=True)
    # One runner at a time per calibration, across processes: a worker orphaned by a killed driver
    # may still be finishing this calibration when a rerun starts.
    with open(work / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ctx.result_path(name).is_file():  # finished by that other process meanwhile
            return
        try:
            _run_steps(ctx, name)
        finally:  # its last events went out with task_succeeded/task_failed; none stays queued in any case
            ctx.flush_events()


def _run_steps(ctx: BucketContext, name: str) -> None:
    info = ctx.catalogue[name]
    stage, level = ctx.plan.group_of(name)
    work = ctx.calibration_dir(name)
    steps: dict[str, dict[str, Any]] = {}

    def step(report: Report, step_name: str, action: Callable[[], T]) -> T:
        report.step = step_name
        ctx.emit("step", name, step=step_name, state="running")
        start = time.time()
        value = action()
        steps[step_name] = {"state": "done", "start": start, "duration": time.time() - start}
        # appended with the next step's "running" (or the task's end): no work comes between them
        ctx.emit_later("step", name, step=step_name, state="done")
        return value

    with reported(ctx, name, stage=stage, group=level, start_later=True) as report:  # with caf_config's "running"
        report.step = "caf_config"  # an upstream failure is reported against the first step
        check_upstream(ctx, name, info)
        caf_config = step(report, "caf_config", lambda: write_caf_config(ctx, info, work))
        input_data = step(report, "input_data", lambda: write_input_data(ctx, info, work))
        report.log_path = calibrate_log = work / "calibrate.log"
        step(report, "calibrate", lambda: calibrate(ctx, name, caf_config, input_data, work, calibrate_log))
        report.log_path = work / "validate.log"
        verdict = step(report, "validate", lambda: validate(ctx, info, work, input_data))
        report.log_path = None
        passed = verdict is None or verdict.passed
        veto = ""
        if passed:
            payloads, veto = step(report, "import_payloads", lambda: import_payloads(ctx, name, work))
            if veto:
                report.vetoed(veto)
        else:
            payloads = []
            steps["import_payloads"] = {"state": "skipped", "start": time.time(), "duration": 0.0}
            ctx.emit_later("step", name, step="import_payloads", state="skipped",
                     detail="validation failed: payloads not published to the prompt global tag")
            report.validation_failed("validation failed: " + (verdict.message if verdict else ""),
                                     work / "validate.log")
    status = TaskStatus.VETOED if veto else TaskStatus.SUCCESS if passed else TaskStatus.VALIDATION_FAILED
    write_json_atomic(ctx.result_path(name), {
        "name": name, "status": status, "stage": stage, "group": level, "start": report.start,
        "duration": report.duration, "steps": steps, "payloads": payloads,
        "verdict": verdict.to_dict() if verdict else None, "settings_commit": ctx.settings().get("commit")})


def check_upstream(ctx: BucketContext, name: str, info: CalibrationInfo) -> None:
    """Upstream calibrations whose validation failed stop this one (unless configured to continue)."""
    if ctx.cfg.calibrations.on_validation_failure == OnValidationFailure.CONTINUE:
        return
    for dep in info.depends_on:
        result = calibration_result(ctx, dep)
        if result and result["status"] in (TaskStatus.VALIDATION_FAILED, TaskStatus.VETOED):
            what = "was vetoed" if result["status"] == TaskStatus.VETOED else "failed its validation"
            raise CalibrationFailed(
                f"upstream calibration {dep} {what}, so its payloads are not in the prompt "
                f"global tag; not running {name} (calibrations.on_validation_failure: stop)")


def write_caf_config(ctx: BucketContext, info: CalibrationInfo, work: Path) -> Path:
    """Step (a): ``caf_config.json`` as b2caf-prompt-run reads it, plus b2luca's provenance."""
    cfg = ctx.cfg
    name = info.name
    settings = ctx.settings()
    overrides = {**cfg.calibrations.expert_config.get(name, {}),
                 **settings.get("expert_configs", {}).get(name, {})}
    resources = cfg.batch.resources_for(name)
    document = {
        "caf_script": str(info.script_path),
        "database_chain": list(cfg.conditions.database_chain),
        "backend_args": runner_for(cfg).backend_args(name, resources),
        "requested_iov": cfg.requested_iov.as_list(),
        "expert_config": info.merged_expert_config(overrides),
        "testing_payloads": str(ctx.prompt_tag.db.database_txt),
        # b2luca's own additions (ignored by b2caf-prompt-run): where local global tags live, provenance.
        "b2luca": {"bucket": cfg.name, "conditions_directory": str(cfg.conditions.directory),
                   "settings_commit": settings.get("commit"),
                   "extra_input_data_filters": {k: list(v) for k, v in
                                                cfg.calibrations.extra_input_data_filters.items()}},
    }
    path = work / "caf_config.json"
    # not fsynced: rewritten whenever the calibration runs again (it is unfinished until result.json, which is)
    write_json_atomic(path, document, durable=False)
    return path


@functools.lru_cache(maxsize=4)
def _snapshot(path: str, identity: tuple[int, ...]) -> pd.DataFrame:
    return read_snapshot(path)


def snapshot(path: Path) -> pd.DataFrame:
    """The RunDB snapshot (:func:`~b2luca.rundb.read_snapshot`, checked), parsed once per process while the file
    stays the same (device, inode, size, mtime, ctime): the calibrations of a local run read it in one process."""
    try:
        st = os.stat(path)
    except OSError:
        return read_snapshot(path)  # its clear error
    return _snapshot(str(path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)).copy()


def prepare(ctx: BucketContext) -> None:
    """In the driver, before luigi forks a calibration's process (several workers): the RunDB snapshot parsed
    into the driver's cache (:func:`snapshot`), inherited by that process and every later one instead of parsed
    by each (~35 ms of pandas per calibration); nothing when the snapshot is not there yet."""
    if os.path.isfile(ctx.cfg.rundb.snapshot):
        snapshot(ctx.cfg.rundb.snapshot)


def write_input_data(ctx: BucketContext, info: CalibrationInfo, work: Path) -> Path:
    """Step (b): ``input_data.json`` from the RunDB snapshot and the data on disk."""
    cfg = ctx.cfg
    root = cfg.data.raw_directory if info.stage == Stage.RAW else cfg.data.cdst_directory
    with using_vocabulary(FilterVocabulary().extended(cfg.calibrations.extra_input_data_filters)):
        document = build_input_data(info.settings, snapshot(cfg.rundb.snapshot), root)
    empty = [name for name, entries in document.items() if not entries]
    if empty:
        raise CalibrationFailed(f"no input data for {', '.join(empty)} in {root} after the input_data_filters "
                                f"(runs {cfg.bucket.first_run}-{cfg.bucket.last_run})")
    path = work / "input_data.json"
    write_json_atomic(path, document, durable=False)  # like caf_config.json: rewritten by every attempt
    runs = sorted({tuple(e[1]) for entries in document.values() for e in entries})
    ctx.emit_later("input_runs", info.name, requested_iov=cfg.requested_iov.as_list(), runs=[list(r) for r in runs],
             files={name: len(entries) for name, entries in document.items()})
    return path


def calibrate(ctx: BucketContext, name: str, caf_config: Path, input_data: Path, work: Path,
              log_path: Path) -> None:
    """Step (c): the calibration script through the configured runner."""
    out = output_database(work, name)
    if out.exists():  # a previous, unfinished attempt: its partial output must not leak into this one
        shutil.rmtree(out)
    log_path.unlink(missing_ok=True)
    reads = work / READS_FILE
    reads.unlink(missing_ok=True)
    result = runner_for(ctx.cfg).calibrate(caf_config, input_data, work, log_path)
    caf = "; ".join(map(str, result.caf_state))
    if caf:
        ctx.emit_later("step", name, step="calibrate", state="running", detail=f"CAF state: {caf}")
    if not result.ok:
        cause = cause_from_log(log_path)
        raise CalibrationFailed(f"calibration script exited with code {result.returncode}"
                                + (f": {cause}" if cause else "")
                                + (f", CAF state {caf}" if caf else "") + f" (log {log_path})")
    check_reads(ctx.catalogue, ctx.plan, name, reads)


def validate(ctx: BucketContext, info: CalibrationInfo, work: Path, input_data: Path) -> Verdict | None:
    """Step (d): the validation script and its verdict (None when the calibration has none)."""
    if info.validation_path is None:
        ctx.emit_later("validation", info.name, passed=True, figures={}, plots=[],
                 message="no validation script for this calibration")
        return None
    out_dir = work / "validation"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir()
    log_path = work / "validate.log"
    log_path.unlink(missing_ok=True)
    verdict_path = work / "verdict.json"
    result = runner_for(ctx.cfg).validate(info.validation_path, work, input_data, verdict_path,
                                          out_dir, log_path, ctx.reference_paths())
    if not result.ok or not verdict_path.is_file():
        cause = cause_from_log(log_path)
        raise CalibrationFailed(f"validation script exited with code {result.returncode}"
                                + (f": {cause}" if cause else "") + f" (log {log_path})")
    verdict = Verdict.load(verdict_path)
    plots = [str(p if Path(p).is_absolute() else out_dir / p) for p in verdict.plots]
    ctx.emit_later("validation", info.name, passed=verdict.passed, figures=verdict.figures, plots=plots,
             message=verdict.message)
    return verdict


def import_payloads(ctx: BucketContext, name: str, work: Path) -> tuple[list[dict[str, Any]], str]:
    """After a passed validation: update/veto rule, then the payloads to the prompt global tag (and the central DB with that
    backend), IoV open-ended from the bucket start.

    Returns (payloads now in the prompt tag, veto reason or "")."""
    cfg = ctx.cfg
    source = LocalDatabase(output_database(work, name))
    result = promote_payloads(cfg, name, source, ctx.prompt_tag)
    ctx.emit_later("upload", name, **result.event(cfg.conditions.backend, cfg.conditions.prompt_global_tag))
    if not result.vetoed:
        ctx.emit_later("payloads", name, global_tag=cfg.conditions.prompt_global_tag, payloads=result.payloads)
    return result.payloads, result.veto_reason
