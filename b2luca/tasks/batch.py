"""The batch adapter: the only module that touches b2luigi's (and luigi's) batch internals.

With ``batch.system: slurm|lsf|htcondor`` every ``CalibrationTask`` and ``CdstProduction`` runs as one
batch job submitted by b2luigi's process class for that system; wrapper and group tasks, the setup
tasks (the RunDB key stays on the login node), local-payload copies and archiving run in the driver.

- :func:`worker_factory` combines b2luigi's batch worker (:class:`SendJobWorkerSchedulerFactory`) with
  the driver's own scheduler factory (the recording scheduler).
- :func:`task_settings` is the complete, fresh b2luigi settings dict of one task (b2luigi merges a
  task's settings into a *global* dict, so they would leak from one task to the next otherwise),
  set as attributes of the task instance: batch system, per-task resources, the absolute interpreter
  as ``executable`` (jobs run ``python -m b2luca --batch-runner --task-id ID --config YAML``), an
  explicit working directory, an allow-listed job environment, one log directory per attempt.
- :class:`JobProcess` wraps b2luigi's process: records every job in the :mod:`ledger <.ledger>`,
  retries a failed job up to ``batch.retries`` times (each attempt logs into its own directory, so
  Slurm's truncation of ``--output`` never loses a log), re-adopts a job still queued or running
  after a driver restart, and cancels on Ctrl-C.
- Secrets: jobs get an allow-listed environment (Slurm ``--export=NIL``, HTCondor ``getenv = false``),
  and every submission command runs with secret-looking variables removed from the environment
  (LSF's ``bsub -env all`` in b2luigi exports whatever the driver has).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import luigi
import luigi.interface
import luigi.scheduler
import luigi.worker
from b2luigi.batch.processes import BatchProcess, JobStatus
from b2luigi.batch.workers import BatchSystems, SendJobWorker, SendJobWorkerSchedulerFactory
from b2luigi.core.settings import set_setting

from ..config import BucketConfig, Resources
from ..enums import BatchSystem
from ..errors import ConfigError, UsageError
from .graph import Bucket, CalibrationTask, CdstProduction
from .ledger import JobLedger, ledger_path

log = logging.getLogger("b2luca.batch")

BATCH_SYSTEMS = tuple(s for s in BatchSystem if s.is_cluster)
#: The task classes (of :mod:`.graph`) that run as batch jobs; everything else runs in the driver.
JOB_CLASSES: tuple[type[luigi.Task], ...] = (CalibrationTask, CdstProduction)
JOB_FAMILIES = tuple(c.get_task_family() for c in JOB_CLASSES)
#: Environment variables a job may inherit (besides b2luca's own); nothing else reaches a job.
JOB_ENV_ALLOWED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH", "USER", "LOGNAME",
                   "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_?KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
SUBMIT_COMMANDS = {BatchSystem.SLURM: ("sbatch", "squeue", "scancel"), BatchSystem.LSF: ("bsub", "bjobs", "bkill"),
                   BatchSystem.HTCONDOR: ("condor_submit", "condor_q", "condor_rm")}
_MODULES = {BatchSystem.SLURM: "b2luigi.batch.processes.slurm", BatchSystem.LSF: "b2luigi.batch.processes.lsf",
            BatchSystem.HTCONDOR: "b2luigi.batch.processes.htcondor"}


# --- secrets ----------------------------------------------------------------------------------------
def secret_names(cfg: BucketConfig, environ: dict[str, str] | None = None) -> set[str]:
    """Names of environment variables that must never reach a job: the configured ones and look-alikes."""
    names = {k for k in (os.environ if environ is None else environ) if SECRET_NAME.search(k)}
    if cfg.report.gitlab is not None and cfg.report.gitlab.token_env:
        names.add(cfg.report.gitlab.token_env)
    if cfg.rundb.api_key_env:
        names.add(cfg.rundb.api_key_env)
    if cfg.conditions.central is not None and cfg.conditions.central.token_env:
        names.add(cfg.conditions.central.token_env)
    return names


@contextlib.contextmanager
def scrubbed_environ(names: set[str]) -> Iterator[None]:
    """Remove ``names`` from ``os.environ`` while submitting (the submit commands inherit it)."""
    saved = {k: os.environ.pop(k) for k in list(names) if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def job_environment(cfg: BucketConfig, resources: Resources) -> dict[str, str]:
    """The whole environment a job gets from b2luca: allow-listed variables, never a secret."""
    secrets = secret_names(cfg)
    secret_values = {os.environ[k] for k in secrets if os.environ.get(k)}
    env = {k: os.environ[k] for k in JOB_ENV_ALLOWED
           if k in os.environ and k not in secrets and os.environ[k] not in secret_values}
    # No thread count of our own: a job computes with the same BLAS threading as a local run, so its
    # payloads are bit-identical (set OMP_NUM_THREADS in the driver's environment to limit it).
    env["B2LUCA_BATCH_JOB"] = "1"
    return env


# --- per-task settings --------------------------------------------------------------------------------
def task_label(task: luigi.Task) -> str:
    """The name a person knows a task by: the calibration name, ``CdstProduction:r00003``, or its family."""
    if isinstance(task, CalibrationTask):
        return str(task.name)
    return str(getattr(task, "task_name", task.get_task_family()))


def runs_as_job(cfg: BucketConfig, task: luigi.Task) -> bool:
    """Whether the task is submitted to the batch system (else it runs in the driver)."""
    return cfg.batch.system.is_cluster and isinstance(task, JOB_CLASSES)


def job_dir(cfg: BucketConfig, task: luigi.Task) -> Path:
    """Submit file, wrapper script and per-attempt logs of one task: ``<work_dir>/batch/jobs/<label>/``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task_label(task))
    return cfg.work_dir / "batch" / "jobs" / safe


def resources_for(cfg: BucketConfig, task: luigi.Task) -> Resources:
    """Resources of a task: ``batch.resources.per_task`` by its name, then by its family, then the default.

    The same entry feeds the calibration's ``backend_args`` in ``caf_config.json``.
    """
    per_task = cfg.batch.per_task
    for key in (task_label(task), task.get_task_family()):
        if key in per_task:
            return per_task[key]
    return cfg.batch.default_resources


def task_settings(cfg: BucketConfig, task: luigi.Task, attempt: int) -> dict[str, Any]:
    """The complete b2luigi settings of one job attempt (a new dict every call)."""
    system = cfg.batch.system
    res = resources_for(cfg, task)
    name = f"b2luca-{cfg.name}-{task_label(task)}"
    settings: dict[str, Any] = {
        "batch_system": str(system),
        "executable": [shlex.quote(sys.executable), "-m", "b2luca"],
        "add_filename_to_cmd": False,
        "task_cmd_additional_args": ["--config", shlex.quote(str(cfg.path))],
        "working_dir": str(cfg.work_dir),
        "env_script": "",
        "env": job_environment(cfg, res),
        "job_name": name,
    }
    if system is BatchSystem.SLURM:
        slurm = {"job-name": name, "export": "NIL", "cpus-per-task": res.cpus, "mem": f"{res.memory_mb}M",
                 "time": res.walltime_min}
        if res.queue:
            slurm["partition"] = res.queue
        settings["slurm_settings"] = slurm
    elif system is BatchSystem.LSF:
        settings["job_slots"] = res.cpus
        if res.queue:
            settings["queue"] = res.queue
    elif system is BatchSystem.HTCONDOR:
        condor = {"getenv": "false", "request_cpus": res.cpus, "request_memory": res.memory_mb,
                  "+MaxRuntime": res.walltime_min * 60}
        if res.queue:
            condor["+JobFlavour"] = f'"{res.queue}"'
        settings["htcondor_settings"] = condor
    base = job_dir(cfg, task)
    settings["get_task_file_dir"] = lambda: str(base)
    settings["get_log_file_dir"] = lambda: str(base / f"attempt-{attempt}") + "/"
    return settings


def apply_settings(task: luigi.Task, settings: dict[str, Any]) -> None:
    """Set the settings as attributes of this task instance (b2luigi reads a task's attributes first)."""
    for key, value in settings.items():
        setattr(task, key, value)


# --- the process of one task: submit, watch, retry, adopt, cancel -----------------------------------
def _status_cache(system: BatchSystem):
    return importlib.import_module(_MODULES[system])._batch_job_status_cache


def _job_ids(system: BatchSystem, ids: list[str]) -> list:
    return [str(i) if system is BatchSystem.LSF else int(i) for i in ids]


def _is_queued(system: BatchSystem, job_id: Any) -> bool:
    """Whether b2luigi's last status query saw the job waiting in the queue (not yet running)."""
    value = _status_cache(system).get(job_id)
    if value is None:
        return False
    if system is BatchSystem.SLURM:
        return str(value) == "PENDING"
    if system is BatchSystem.LSF:
        return value in ("PEND", "PSUSP")
    return int(value[0]) == 1  # HTCondor idle


class JobProcess(BatchProcess):
    """b2luigi's process for the configured system, plus ledger, retries, re-adoption and clean logs."""

    def __init__(self, task, scheduler, result_queue, worker_timeout, *, cfg: BucketConfig, ledger: JobLedger,
                 inner_class: type[BatchProcess]) -> None:
        super().__init__(task, scheduler, result_queue, worker_timeout)
        self.cfg, self.ledger, self.inner_class = cfg, ledger, inner_class
        self.system = cfg.batch.system
        self.max_attempts = 1 + cfg.batch.retries
        self.attempts_here = 0
        self.inner: BatchProcess | None = None
        self._args = (scheduler, result_queue, worker_timeout)

    def _new_inner(self) -> BatchProcess:
        return self.inner_class(self.task, *self._args)

    def start_job(self) -> None:
        live = self.ledger.live_job(self.task.task_id)
        if live is not None and self._adopt(live):
            return
        self._submit()

    def _adopt(self, attempt: dict) -> bool:
        """Watch a job a killed driver left queued or running, instead of submitting a duplicate."""
        inner = self._new_inner()
        inner._batch_job_ids = _job_ids(self.system, attempt["job_ids"])
        apply_settings(self.task, task_settings(self.cfg, self.task, attempt["attempt"]))
        status = inner.get_job_status()
        if status == JobStatus.aborted:
            self.ledger.set_state(self.task.task_id, "failed", note="gone after a driver restart")
            return False
        self.inner = inner
        self.ledger.set_state(self.task.task_id, "running" if status == JobStatus.running else "done",
                              note=f"adopted by driver pid {os.getpid()}")
        log.info("adopted job(s) %s of %s", attempt["job_ids"], self.task.task_id)
        return True

    def _submit(self) -> None:
        attempt = self.ledger.attempts(self.task.task_id) + 1
        settings = task_settings(self.cfg, self.task, attempt)
        apply_settings(self.task, settings)
        log_dir = Path(settings["get_log_file_dir"]())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.inner = self._new_inner()
        try:
            with scrubbed_environ(secret_names(self.cfg)):
                self.inner.start_job()
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:  # sbatch/bsub/condor_submit refused
            log.error("submission of %s failed: %s", self.task.task_id, exc)
            self._put_to_result_queue(status=luigi.scheduler.FAILED, explanation=f"batch submission failed: {exc}")
            self._terminated = True
            return
        self.attempts_here += 1
        ids = [str(j) for j in getattr(self.inner, "_batch_job_ids", [])]
        self.ledger.submitted(self.task.task_id, task_label(self.task), self.system, ids, log_dir)

    def _keep_task_logs(self) -> None:
        """Copy the calibration's own logs (rewritten by the next attempt) into this attempt's log dir."""
        if not isinstance(self.task, CalibrationTask):
            return
        attempt_dir = Path(self.task.get_log_file_dir())
        for name in ("calibrate.log", "validate.log"):
            source = self.cfg.work_dir / "calibrations" / str(self.task.name) / name
            if source.is_file() and attempt_dir.is_dir():
                shutil.copy2(source, attempt_dir / name)

    def get_job_status(self) -> JobStatus:
        if self.inner is None:
            return JobStatus.aborted
        status = self.inner.get_job_status()
        tid = self.task.task_id
        if status == JobStatus.running:
            ids = getattr(self.inner, "_batch_job_ids", [])
            queued = bool(ids) and all(_is_queued(self.system, j) for j in ids)
            self.ledger.set_state(tid, "queued" if queued else "running")
            return status
        self._keep_task_logs()
        if status == JobStatus.successful:
            self.ledger.set_state(tid, "done")
            return status
        if self.attempts_here < self.max_attempts and not self.task.complete():
            self.ledger.set_state(tid, "retrying", attempt_state="failed")
            log.warning("job of %s failed (attempt %d); resubmitting", tid, self.ledger.attempts(tid))
            self._submit()
            return JobStatus.running
        self.ledger.set_state(tid, "failed")
        return JobStatus.aborted

    def terminate_job(self) -> None:
        if self.inner is not None:
            self.inner.terminate_job()
            self.ledger.set_state(self.task.task_id, "cancelled")


class BatchWorker(SendJobWorker):
    """b2luigi's batch worker: job tasks through :class:`JobProcess`, everything else in the driver."""

    def __init__(self, *args: Any, cfg: BucketConfig, ledger: JobLedger, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg, self.ledger = cfg, ledger

    def _create_task_process(self, task):
        if not runs_as_job(self.cfg, task):
            return luigi.worker.Worker._create_task_process(self, task)
        inner_class = BatchSystems(str(self.cfg.batch.system)).load_process_class()
        return JobProcess(task, self._scheduler, self._task_result_queue, self._config.timeout,
                          cfg=self.cfg, ledger=self.ledger, inner_class=inner_class)


class CombinedFactory(SendJobWorkerSchedulerFactory):
    """b2luigi's batch worker factory with the scheduler of another factory (the driver's recorder)."""

    def __init__(self, scheduler_factory: luigi.interface._WorkerSchedulerFactory, cfg: BucketConfig,
                 ledger: JobLedger) -> None:
        self.scheduler_factory, self.cfg, self.ledger = scheduler_factory, cfg, ledger

    def create_local_scheduler(self):
        return self.scheduler_factory.create_local_scheduler()

    def create_remote_scheduler(self, url):
        return self.scheduler_factory.create_remote_scheduler(url)

    def create_worker(self, scheduler, worker_processes, assistant=False):
        return BatchWorker(scheduler=scheduler, worker_processes=worker_processes, assistant=assistant,
                           cfg=self.cfg, ledger=self.ledger)


def open_ledger(cfg: BucketConfig) -> JobLedger:
    """The bucket's job ledger (created on first submission)."""
    return JobLedger(ledger_path(cfg.work_dir))


def worker_factory(scheduler_factory: luigi.interface._WorkerSchedulerFactory, cfg: BucketConfig):
    """The factory ``luigi.build`` gets: the driver's own one for local runs, combined with b2luigi's batch
    worker for a batch system (then also sets b2luigi's global status-cache TTL from the YAML)."""
    if not cfg.batch.system.is_cluster:
        return scheduler_factory
    missing = [c for c in SUBMIT_COMMANDS[cfg.batch.system] if shutil.which(c) is None]
    if missing:
        raise ConfigError(f"{cfg.path}: batch.system: {cfg.batch.system}, but {', '.join(missing)} is not on PATH "
                          "(run on a submit node of the cluster, or use batch.system: local)")
    set_setting("batch_status_cache_ttl", cfg.batch.status_cache_ttl)
    return CombinedFactory(scheduler_factory, cfg, open_ledger(cfg))


def cancel_live_jobs(cfg: BucketConfig) -> list[str]:
    """Cancel every job the ledger says may still be queued or running (Ctrl-C); return their ids."""
    if not cfg.batch.system.is_cluster:
        return []
    ledger = open_ledger(cfg)
    command = SUBMIT_COMMANDS[cfg.batch.system][2]
    cancelled: list[str] = []
    for task_id, attempt in ledger.live_jobs():
        subprocess.run([command, *attempt["job_ids"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        ledger.set_state(task_id, "cancelled", note="cancelled on interrupt")
        cancelled += attempt["job_ids"]
    return cancelled


def settle(ledger: JobLedger, tasks: list[luigi.Task]) -> None:
    """After a run: a job the ledger still calls live whose task is complete finished while no driver
    watched it (the driver was killed): record it as done."""
    for task in tasks:
        if ledger.live_job(task.task_id) is not None and task.complete():
            ledger.set_state(task.task_id, "done", note="finished while no driver was watching")


# --- inside a job -------------------------------------------------------------------------------------
def run_job(config_path: str, task_id: str) -> None:
    """Run one task of the bucket in this process (the job side of ``--batch-runner --task-id``)."""
    from b2luigi.cli import runner
    from b2luigi.core.utils import task_iterator

    for task in task_iterator(Bucket(config_path=config_path)):
        if task.task_id == task_id:
            runner.run_as_batch_worker([task], types.SimpleNamespace(task_id=task_id))
            return
    raise UsageError(f"{config_path}: no task {task_id} in this bucket's task graph "
                     "(was the YAML changed after the job was submitted?)")


__all__ = ["BATCH_SYSTEMS", "JOB_CLASSES", "JOB_FAMILIES", "BatchWorker", "CombinedFactory", "JobProcess", "cancel_live_jobs",
           "job_environment", "open_ledger", "resources_for", "run_job", "runs_as_job", "secret_names",
           "settle", "task_settings", "worker_factory"]
