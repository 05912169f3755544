"""The driver of ``b2luca run``: build the DAG, run it with luigi, and tell the truth about the outcome.

We call ``luigi.build(..., detailed_summary=True)`` ourselves (``b2luigi.process`` returns nothing and
exits 0 on failure) and hook the scheduler in this process: every status change a worker reports
(PENDING, RUNNING, DONE, FAILED, ...) passes through :class:`RecordingScheduler`, which works the same
with one worker or many and does not depend on luigi's event handlers (they run in child processes).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import luigi
import luigi.interface
import luigi.scheduler
import luigi.worker

from ..atomic import clean_bucket_temp_files, write_json_atomic
from ..conditions.verify import bucket_databases, damage_report, verify_databases
from ..catalogue import Plan
from ..conditions.backend import backend_for
from ..conditions.lifecycle import begin_run, finish_run
from ..catalogue.responsibles import subsystem_responsibles
from ..config import BucketConfig
from ..dataset import ensure_data
from ..enums import Stage, TaskStatus
from ..failures import cause_from_expl
from ..reco import fit as reco_fit
from ..report import local_issue_path, open_reporter
from ..runlock import run_lock
from ..runners import job_server, runner_for
from ..runners.native import NativeRunner
from . import batch, cdst, progress  # batch clusters and live progress (issue 13)
from .context import BucketContext, context_for, group_name, local_task_name, read_json
from .graph import ArchiveLogs, Bucket, CalibrationTask, CdstProduction, CopyLocalPayloads, PullSettings
from .ledger import format_ledger

log = logging.getLogger("b2luca.driver")

# Luigi's default worker timing (1 s poll + up to 5 s jitter) would dominate a bucket of short tasks.
WORKER_TIMING = {"wait_interval": "0.05", "wait_jitter": "0.0"}


# --- the scheduler hook ---------------------------------------------------------------------------
@dataclass
class TaskRecord:
    """What the driver saw of one task during the run."""

    task_id: str
    family: str
    params: dict[str, str]
    status: str = "PENDING"
    complete_at_start: bool = False
    started: float | None = None
    finished: float | None = None
    history: list[tuple[float, str]] = field(default_factory=list)
    cause: str = ""  # one line: why it failed (from the task's failure explanation)

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


class RecordingScheduler(luigi.scheduler.Scheduler):
    """luigi's local scheduler, recording every status change it is told about."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict[str, TaskRecord] = {}

    def add_task(self, task_id=None, status=luigi.scheduler.PENDING, **kwargs):  # noqa: D401 - luigi signature
        now = time.time()
        record = self.records.get(task_id)
        if record is None:
            record = TaskRecord(task_id=task_id, family=kwargs.get("family") or "", params=dict(kwargs.get("params") or {}))
            record.complete_at_start = status == luigi.scheduler.DONE
            self.records[task_id] = record
        if kwargs.get("family"):
            record.family = kwargs["family"]
        if kwargs.get("params"):
            record.params = dict(kwargs["params"])
        if status != record.status or not record.history:
            record.history.append((now, status))
        if status == luigi.scheduler.RUNNING and record.started is None:
            record.started = now
        if status in (luigi.scheduler.DONE, luigi.scheduler.FAILED) and record.started is not None:
            record.finished = now
        if status == luigi.scheduler.FAILED and kwargs.get("expl"):
            record.cause = cause_from_expl(kwargs["expl"])
        record.status = status
        return super().add_task(task_id=task_id, status=status, **kwargs)


    def get_work(self, *args: Any, **kwargs: Any) -> dict:
        """luigi's local scheduler marks a task RUNNING here (not through add_task): record the start."""
        response = super().get_work(*args, **kwargs)
        task_id = response.get("task_id") if isinstance(response, dict) else None
        if task_id and task_id in self.records:
            record = self.records[task_id]
            record.started = record.started or time.time()
            record.status = luigi.scheduler.RUNNING
            record.history.append((time.time(), luigi.scheduler.RUNNING))
        return response


class PreparingWorker(luigi.worker.Worker):
    """luigi's worker; with several worker processes (luigi forks one process per task), a task's
    ``prepare_in_driver()`` runs here just before its fork: what every task process would read for itself
    (the RunDB snapshot, the production's constants) is read once into this process's caches and inherited by
    each later fork (issue 15: ~0.1 s of each cDST production task, ~35 ms of each calibration).  A failure
    there is only logged: the task's own process reads everything again and reports its own errors.  Wrapper
    tasks run in this process (:meth:`_create_task_process`)."""

    def _run_task(self, task_id: str) -> None:
        task = self._scheduled_tasks.get(task_id)
        prepare = getattr(task, "prepare_in_driver", None)
        forks = self._config.force_multiprocessing or self.worker_processes > 1
        if forks and prepare is not None and task_id not in self._running_tasks:
            try:
                prepare()
            except Exception as exc:  # noqa: BLE001 - the task meets (and reports) the same problem itself
                log.debug("preparing %s in the driver: %s", task_id, exc)
        super()._run_task(task_id)

    def _create_task_process(self, task: luigi.Task):
        """luigi's task process; a wrapper task (no work: it is done when its requirements are) runs in this
        process even with several workers, as with one, instead of in a fork of its own (~13 ms of CPU each)."""
        process = super()._create_task_process(task)
        if isinstance(task, luigi.WrapperTask) and process.timeout_time is None:
            process.use_multiprocessing = False
        return process


class RecordingFactory(luigi.interface._WorkerSchedulerFactory):
    """Hands luigi our recording scheduler and :class:`PreparingWorker`."""

    def __init__(self) -> None:
        self.scheduler: RecordingScheduler | None = None

    def create_local_scheduler(self) -> RecordingScheduler:
        self.scheduler = RecordingScheduler(prune_on_get_work=True, record_task_history=False)
        return self.scheduler

    def create_worker(self, scheduler, worker_processes, assistant=False) -> PreparingWorker:
        return PreparingWorker(scheduler=scheduler, worker_processes=worker_processes, assistant=assistant)


# --- what the run did -----------------------------------------------------------------------------
@dataclass
class TaskRow:
    """One line of the final table and of status.json."""

    name: str
    kind: str
    stage: str
    group: str
    state: TaskStatus
    duration: float | None
    report: str
    cause: str = ""  # one line, for failed tasks


def _walk(tasks: Iterable[luigi.Task]) -> list[luigi.Task]:
    """All tasks reachable from ``tasks`` (requirements first, each once)."""
    seen: dict[str, luigi.Task] = {}

    def visit(task: luigi.Task) -> None:
        if task.task_id in seen:
            return
        for dep in luigi.task.flatten(task.requires()):
            visit(dep)
        seen[task.task_id] = task

    for task in tasks:
        visit(task)
    return list(seen.values())


def _direct_work(task: luigi.Task) -> list[luigi.Task]:
    """The non-wrapper tasks ``task`` requires, looking through wrapper tasks (each once, in order)."""
    out: dict[str, luigi.Task] = {}
    for dep in luigi.task.flatten(task.requires()):
        for work in (_direct_work(dep) if isinstance(dep, luigi.WrapperTask) else [dep]):
            out.setdefault(work.task_id, work)
    return list(out.values())


def _describe(task: luigi.Task, ctx: BucketContext) -> tuple[str, str, str, str]:
    """(display name, kind, stage, group) of a task."""
    name = getattr(task, "task_name", task.get_task_family())
    if isinstance(task, CalibrationTask):
        stage, level = ctx.plan.group_of(task.name)
        return name, "calibration", stage, group_name(stage, level)
    if isinstance(task, CopyLocalPayloads):
        return name, "local", Stage.LOCAL, Stage.LOCAL
    if isinstance(task, CdstProduction):
        return name, "cdst_production", Stage.PRODUCTION, Stage.PRODUCTION
    if isinstance(task, ArchiveLogs):
        return name, "archive", "archive", task.group
    return name, "setup", "setup", "-"


#: The row state of a task luigi last saw in each scheduler status (when luigi.build has returned: a task
#: still running then was interrupted; any other status means it did not run).
_STATE_NAMES = {"DONE": TaskStatus.SUCCESS, "FAILED": TaskStatus.FAILED, "PENDING": TaskStatus.NOT_RUN,
                "RUNNING": TaskStatus.INTERRUPTED, "BATCH_RUNNING": TaskStatus.INTERRUPTED,
                "DISABLED": TaskStatus.DISABLED, "UNKNOWN": TaskStatus.SCHEDULING_FAILED}


def collect_rows(ctx: BucketContext, tasks: list[luigi.Task], records: dict[str, TaskRecord] | None) -> list[TaskRow]:
    """Every non-wrapper task's state: from this run's records when given, else from the outputs on disk."""
    rows = []
    seen = records or {}
    for task in _walk(tasks):
        if isinstance(task, luigi.WrapperTask):
            continue
        name, kind, stage, group = _describe(task, ctx)
        record = seen.get(task.task_id)
        duration = record.duration if record else None
        state: TaskStatus
        if record is not None:
            state = (TaskStatus.DONE_BEFORE if record.complete_at_start
                     else _STATE_NAMES.get(record.status, TaskStatus.NOT_RUN))
            if record.status == "PENDING" and any(
                    getattr(seen.get(d.task_id), "status", None) == "FAILED"
                    for d in _walk(luigi.task.flatten(task.requires()))):
                state = TaskStatus.UPSTREAM_FAILED
        elif records is not None:  # under a wrapper luigi found complete: never scheduled this time
            state = TaskStatus.DONE_BEFORE if task.complete() else TaskStatus.NOT_RUN
        else:
            state = TaskStatus.SUCCESS if task.complete() else TaskStatus.PENDING
        report = ""
        if isinstance(task, CalibrationTask):
            result_path = ctx.result_path(task.name)
            if result_path.is_file():
                result = read_json(result_path)
                if result["status"] == TaskStatus.VALIDATION_FAILED:
                    state = (TaskStatus.DONE_BEFORE_VALIDATION_FAILED if state == TaskStatus.DONE_BEFORE
                             else TaskStatus.VALIDATION_FAILED)
                elif result["status"] == TaskStatus.VETOED:
                    state = TaskStatus.DONE_BEFORE_VETOED if state == TaskStatus.DONE_BEFORE else TaskStatus.VETOED
                if duration is None:
                    duration = result.get("duration")
            report = str(local_issue_path(ctx.work_dir, task.name))
        elif isinstance(task, (CopyLocalPayloads, CdstProduction, ArchiveLogs)) and Path(task.output_path()).is_file():
            document = read_json(Path(task.output_path()))
            if duration is None:
                duration = document.get("duration")
            if kind == "archive":
                report = document.get("location", "")
        rows.append(TaskRow(name, kind, stage, group, state, duration, report,
                            cause=record.cause if record is not None and record.status == "FAILED" else ""))
    return rows


def format_table(rows: list[TaskRow]) -> str:
    """A plain-text table of task rows."""
    header = ("task", "stage", "group", "state", "duration", "report")
    lines = [header] + [(r.name, r.stage, r.group, r.state,
                         "" if r.duration is None else f"{r.duration:.1f} s", r.report) for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(str(v).ljust(w) for v, w in zip(line[:-1], widths)) + "  " + line[-1])
        if index == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(out)


# --- invalidation (--rerun) -----------------------------------------------------------------------
def rerun_closure(plan: Plan, names: Iterable[str]) -> list[str]:
    """The calibrations a ``--rerun`` of ``names`` invalidates, in order: each name, then its dependents.

    A raw calibration also invalidates every cdst calibration (they read cDST files made with the raw
    constants).  An unknown name raises the plan's error.
    """
    targets: list[str] = []
    for name in names:
        closure = [name] + plan.dependents(name)
        if plan.group_of(name)[0] == Stage.RAW:
            closure += plan.stage(Stage.CDST).calibrations
        targets += [n for n in closure if n not in targets]
    return targets


def reruns_raw(plan: Plan, names: Iterable[str]) -> bool:
    """Whether a ``--rerun`` of ``names`` changes raw-stage constants (so cDST production must run again)."""
    return any(plan.group_of(n)[0] == Stage.RAW for n in names)


def invalidate(ctx: BucketContext, names: Iterable[str]) -> list[str]:
    """Forget the results of ``names`` and of everything that depends on them; return what was invalidated.

    See :func:`rerun_closure`; the cDST production markers go too when raw constants change.  Payload
    revisions already in the prompt global tag stay (payloads are immutable); a rerun with new content
    adds a revision.
    """
    plan = ctx.plan
    targets = rerun_closure(plan, names)
    stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    groups = set()
    for name in targets:
        result = ctx.result_path(name)
        if result.is_file():
            history = result.parent / "history"
            history.mkdir(exist_ok=True)
            os.replace(result, history / f"result-{stamp}.json")
        stage, level = plan.group_of(name)
        groups.add(group_name(stage, level))
    if reruns_raw(plan, targets):
        # luigi decides CdstProduction.complete() when it schedules, before the rerun stores new constants:
        # forget the productions too; each one then recomputes only the branch groups whose constants changed.
        groups.add(Stage.PRODUCTION)
        for marker in (ctx.work_dir / "cdst_production").glob("r*.json"):
            marker.unlink()
    for group in groups:
        (ctx.work_dir / "archive" / f"{group}.json").unlink(missing_ok=True)
    return targets


# --- the run --------------------------------------------------------------------------------------
#: Row states of tasks that should have run and did not finish (the run failed).
_NOT_FINISHED = frozenset({TaskStatus.FAILED, TaskStatus.INTERRUPTED, TaskStatus.NOT_RUN, TaskStatus.UPSTREAM_FAILED,
                           TaskStatus.SCHEDULING_FAILED})
#: Row states of calibrations that finished but failed their validation or were vetoed by the update/veto rule
#: (the run failed too).
_VALIDATION_FAILED = frozenset({TaskStatus.VALIDATION_FAILED, TaskStatus.DONE_BEFORE_VALIDATION_FAILED,
                                TaskStatus.VETOED, TaskStatus.DONE_BEFORE_VETOED})


def plan_events(ctx: BucketContext) -> list[dict[str, Any]]:
    """The plan as the report layer wants it in ``bucket_started``."""
    cfg, plan = ctx.cfg, ctx.plan
    entries: list[dict[str, Any]] = []
    responsibles = subsystem_responsibles(cfg.calibrations.subsystem_responsibles)
    for sub, tags in cfg.local_calibrations.items():
        for tag, names in tags.items():
            entries.append({"name": local_task_name(sub, tag), "stage": Stage.LOCAL, "group": Stage.LOCAL,
                            "kind": "local", "expert": responsibles.get(sub.lower()),
                            "description": f"copy {', '.join(names)} from {tag}",
                            "depends_on": [], "produced_payloads": list(names)})
    for stage in plan.stages:
        if stage.name == Stage.PRODUCTION:
            for runs in cdst.production_groups(ctx):
                what = f"run {runs[0]}" if len(runs) == 1 else f"runs {runs[0]}-{runs[-1]} ({len(runs)} runs)"
                entries.append({"name": cdst.group_task_name(runs), "stage": Stage.PRODUCTION,
                                "group": Stage.PRODUCTION, "kind": "cdst_production", "expert": None,
                                "description": f"reconstruct {what} with the raw-stage constants",
                                "depends_on": [], "produced_payloads": []})
            continue
        for level, group in enumerate(stage.groups):
            for name in group:
                info = ctx.catalogue[name]
                entries.append({"name": name, "stage": stage.name, "group": level, "kind": "calibration",
                                "expert": info.settings.expert_username,
                                "description": (info.settings.description or "").strip(),
                                "depends_on": list(info.depends_on),
                                "produced_payloads": list(info.settings.produced_payloads)})
    return entries


def configure_luigi(log_file: Path) -> None:
    """Worker timing suited to short tasks; luigi's own log (tracebacks included) goes to ``log_file``."""
    config = luigi.configuration.get_config()
    for key, value in WORKER_TIMING.items():
        config.set("worker", key, value)
    config.set("core", "no_configure_logging", "true")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    for name in ("luigi", "luigi-interface"):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_b2luca", False)]:
            logger.removeHandler(old)
            old.close()
        handler._b2luca = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@dataclass
class RunOutcome:
    """What ``run_bucket`` reports back."""

    exit_code: int
    rows: list[TaskRow]
    luigi_status: str
    seconds: float


def run_bucket(cfg: BucketConfig, workers: int | None = None, dry_run: bool = False, only: str | None = None,
               rerun: Iterable[str] = (), echo: Callable[[str], None] = print) -> RunOutcome:
    """Run (or, with ``dry_run``, explain) the bucket's DAG; exit code 0 only when everything succeeded."""
    start = time.perf_counter()
    config_path = str(cfg.path)
    context_for.cache_clear()
    ctx = context_for(config_path)
    plan = ctx.plan  # a catalogue error surfaces here, before anything runs
    if only is not None:
        plan.group_of(only)
    rerun = list(rerun)
    for name in rerun:
        plan.group_of(name)
    tasks: list[luigi.Task] = ([CalibrationTask(config_path=config_path, name=only)] if only
                               else [Bucket(config_path=config_path)])
    if dry_run:
        return _dry_run(ctx, tasks, rerun, echo, start)
    with run_lock(cfg.work_dir, command=f"b2luca run {config_path}"):
        return _run_locked(cfg, ctx, tasks, config_path, workers, rerun, only, echo, start)


def _run_locked(cfg: BucketConfig, ctx: BucketContext, tasks: list[luigi.Task], config_path: str,
                workers: int | None, rerun: list[str], only: str | None, echo: Callable[[str], None],
                start: float) -> RunOutcome:
    """The run itself, under the bucket's run lock."""
    # Pre-flight of the report transport (GitLab: token, project, access) before anything runs;
    # a ReportConfigError ends the run with its message (exit code 2).
    open_reporter(cfg.report, cfg.work_dir, cfg.name, preflight=True)
    clean_bucket_temp_files(cfg, echo)  # leftovers of a killed earlier run (e.g. .raw_*.root.*.tmp)
    message = ensure_data(cfg)
    if message:
        echo(message)
    tag_backend = backend_for(cfg)
    begin_run(tag_backend, ctx.emit, rerun)  # the prompt tag OPEN (reopened for --rerun) before invalidating
    if rerun:
        echo("invalidated: " + ", ".join(invalidate(ctx, rerun)))
        payloads = {p for name in rerun for p in ctx.catalogue[name].settings.produced_payloads}
        for line in ctx.prompt_tag.db.retire_damaged(payloads, "damaged, retired by --rerun"):
            echo(f"retired damaged line of the prompt global tag: {line}")
    configure_luigi(cfg.work_dir / "luigi.log")
    settings_commit = _pull_settings(ctx, config_path)
    ctx.emit("bucket_started", None, requested_iov=cfg.requested_iov.as_list(), settings_commit=settings_commit,
             work_dir=str(cfg.work_dir), plan=plan_events(ctx))
    factory = RecordingFactory()
    build_factory = batch.worker_factory(factory, cfg)
    ledger = getattr(build_factory, "ledger", None)
    labels = {t.task_id: _describe(t, ctx)[::2] for t in _walk(tasks) if not isinstance(t, luigi.WrapperTask)}
    try:
        with _job_server(cfg, ctx), progress.Progress(
                cfg.work_dir, labels, lambda: factory.scheduler.records if factory.scheduler else {},
                (lambda: ledger.tasks) if ledger else None, interval=cfg.batch.progress_interval,
                on_tick=ctx.reporter.deliver_local):
            if any(isinstance(t, CdstProduction) for t in _walk(tasks)):
                reco_fit.preload()  # the track fit's numba kernels, loaded once before luigi forks the workers
            # Objects of the driver's imports exempt from garbage collection during the build: luigi forks a
            # process per task (several workers), whose collections would otherwise touch and so copy every page
            # of them (Python's gc.freeze advice); with one worker the collections have less to scan.
            gc.freeze()
            try:
                result = luigi.build(tasks, workers=workers or cfg.batch.workers, local_scheduler=True,
                                     detailed_summary=True, worker_scheduler_factory=build_factory)
            finally:
                gc.unfreeze()
    except KeyboardInterrupt:
        cancelled = batch.cancel_live_jobs(cfg)
        echo(f"interrupted; cancelled {len(cancelled)} batch job(s)" if cancelled else "interrupted")
        raise
    records = factory.scheduler.records if factory.scheduler else {}
    if ledger:
        batch.settle(ledger, [t for t in _walk(tasks) if t.task_id in labels])
    context_for.cache_clear()
    ctx = context_for(config_path)
    rows = collect_rows(ctx, tasks, records)
    failed = [r for r in rows if r.state in _NOT_FINISHED]
    validation_failed = [r for r in rows if r.state in _VALIDATION_FAILED]
    ok = result.status.name in ("SUCCESS", "SUCCESS_WITH_RETRY") and not failed and not validation_failed
    damage = verify_databases(bucket_databases(cfg))  # no SUCCESS on a damaged conditions database
    ok = ok and not damage
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    seconds = time.perf_counter() - start
    write_json_atomic(cfg.work_dir / "status.json", {
        "bucket": cfg.name, "finished": time.time(), "success": ok, "luigi_status": result.status.name,
        "seconds": seconds, "rows": [r.__dict__ for r in rows], "batch_jobs": ledger.tasks if ledger else {}})
    state = finish_run(tag_backend, ctx.emit, all_passed=ok and only is None)
    ctx.emit("bucket_finished", None, success=ok, counts=counts)
    pending = ctx.reporter.flush()
    echo(format_table(rows))
    if ledger and ledger.tasks:
        echo(f"\nbatch jobs ({cfg.batch.system}; ledger {ledger.path}):\n" + format_ledger(ledger.tasks))
    if pending:
        echo(f"\n{pending} report event(s) could not be delivered yet; they wait in "
             f"{cfg.work_dir / 'report'}; deliver them with: b2luca report --flush {cfg.path}")
    verdict = "SUCCESS" if ok else "FAILED"
    echo(f"\nprompt global tag {cfg.conditions.prompt_global_tag} ({tag_backend.kind}): {state.value if state else '-'}")
    echo(f"\nbucket {cfg.name}: {verdict} in {seconds:.1f} s ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
         f"luigi: {result.status.name}")
    if not ok:
        for row in [r for r in failed if r.state in (TaskStatus.FAILED, TaskStatus.INTERRUPTED)] + validation_failed:
            echo(f"  {row.name}: {row.state}" + (f": {row.cause}" if row.cause else "")
                 + (f" — see {row.report}" if row.report else ""))
        skipped = [r for r in failed if r.state not in (TaskStatus.FAILED, TaskStatus.INTERRUPTED)]
        if skipped:
            echo(f"  {len(skipped)} task(s) not run because of these.")
        if damage:
            echo("\n".join(damage_report(damage)))
    return RunOutcome(0 if ok else 1, rows, result.status.name, seconds)


def _job_server(cfg: BucketConfig, ctx: BucketContext) -> contextlib.AbstractContextManager:
    """A fork server for the native jobs of a local run (:mod:`b2luca.runners.job_server`), with torch
    preloaded when a selected calibration uses the ML library; batch jobs and the basf2 runner start their
    processes as before."""
    runner = runner_for(cfg)
    if cfg.batch.system.is_cluster or not isinstance(runner, NativeRunner):
        return contextlib.nullcontext()
    scripts = [p for info in ctx.catalogue.calibrations.values() for p in (info.script_path,) if p is not None]
    return job_server.serving(runner.secret_names, cfg.work_dir / "job_server.log",
                              extra_preloads=job_server.preloads_for(scripts))


def _pull_settings(ctx: BucketContext, config_path: str) -> str | None:
    """Fetch the settings repository afresh for every run (finished calibrations stay finished)."""
    # Run in the driver, not through luigi, so a dirty/diverged checkout or a bad bucket.yaml in the
    # repository stops the run with its own message (exit code 2).
    PullSettings(config_path=config_path).run()
    return read_json(ctx.settings_file).get("commit")


def _dry_run(ctx: BucketContext, tasks: list[luigi.Task], rerun: list[str], echo: Callable[[str], None],
             start: float) -> RunOutcome:
    """Say what would run and why, without running or changing anything."""
    invalid = set(rerun_closure(ctx.plan, rerun))
    production_forced = reruns_raw(ctx.plan, rerun)
    will_run: set[str] = set()
    rows = []
    for task in _walk(tasks):
        if isinstance(task, luigi.WrapperTask):
            continue
        name, kind, stage, group = _describe(task, ctx)
        deps = _direct_work(task)
        forced = ((isinstance(task, CalibrationTask) and task.name in invalid)
                  or (isinstance(task, CdstProduction) and production_forced))
        if task.complete() and not forced:
            why, state = "complete (output exists)", TaskStatus.DONE
        else:
            upstream = [_describe(d, ctx)[0] for d in deps if d.task_id in will_run]
            if forced:
                why = "--rerun invalidates it"
            elif upstream:
                why = "output missing; after " + ", ".join(upstream[:3]) + (" ..." if len(upstream) > 3 else "")
            else:
                out = getattr(task, "output_path", None)
                why = f"output missing: {out()}" if out else "not complete"
            state = TaskStatus.WOULD_RUN
            will_run.add(task.task_id)
        echo(f"{state:9s}  {name:32s} {stage:16s} {why}")
        rows.append(TaskRow(name, kind, stage, group, state, None, why))
    echo(f"\n{len(will_run)} task(s) would run, {len(rows) - len(will_run)} are complete.")
    return RunOutcome(0, rows, "DRY_RUN", time.perf_counter() - start)


def status_rows(cfg: BucketConfig) -> list[TaskRow]:
    """Every task's state from the outputs on disk (and durations from the last run)."""
    context_for.cache_clear()
    ctx = context_for(str(cfg.path))
    rows = collect_rows(ctx, [Bucket(config_path=str(cfg.path))], None)
    status_file = cfg.work_dir / "status.json"
    if status_file.is_file():
        last = {r["name"]: r for r in read_json(status_file)["rows"]}
        for row in rows:
            previous = last.get(row.name)
            if previous and row.state == TaskStatus.PENDING and previous["state"] in (TaskStatus.FAILED,
                                                                                      TaskStatus.UPSTREAM_FAILED):
                row.state = TaskStatus(previous["state"])
            if row.duration is None and previous:
                row.duration = previous.get("duration")
    return rows


__all__ = ["PreparingWorker", "RecordingScheduler", "RunOutcome", "TaskRow", "collect_rows", "format_table", "invalidate",
           "rerun_closure", "run_bucket", "status_rows"]
