"""CalibrationTask: one prompt calibration, in the five steps of DESIGN §1; GroupTask: one plan group.

Steps, each visible in the calibration's work dir and in its report:
(a) ``caf_config.json``, (b) ``input_data.json``, (c) the calibration script through the runner,
(d) its validation script, then the payloads go to the prompt global tag (only when the validation
passed), and (e) ``result.json`` — the task's output, written last and atomically.
"""

from __future__ import annotations

import fcntl
import shutil
from pathlib import Path
from typing import Any

import luigi

from ..contract import Verdict
from ..conditions import LocalDatabase
from ..dataset import build_input_data
from ..rundb import read_snapshot
from ..runners import log_tail, output_database, runner_for
from .base import BucketTask, BucketWrapperTask
from ..atomic import write_json_atomic
from .context import STAGE_CDST, STAGE_RAW, read_json
from .local import LocalCalibrations
from .setup import MakeRunDB, PullSettings
from ..errors import CalibrationFailed
from ..failures import cause_from_log
from ..payload_deps import READS_FILE, check_reads

STATUS_SUCCESS, STATUS_VALIDATION_FAILED = "success", "validation-failed"


def calibration_result(ctx, name: str) -> dict[str, Any] | None:
    """The result.json of a finished calibration, or None."""
    path = ctx.result_path(name)
    return read_json(path) if path.is_file() else None


class CalibrationTask(BucketTask):
    """One calibration of the catalogue, run through the configured runner."""

    name = luigi.Parameter(description="calibration name (CalibrationSettings.name)")

    def output_path(self) -> Path:
        return self.ctx.result_path(self.name)

    def requires(self):
        from .cdst import CdstProduction, production_runs

        ctx = self.ctx
        info = ctx.catalogue[self.name]
        required = [PullSettings(config_path=self.config_path), MakeRunDB(config_path=self.config_path),
                    LocalCalibrations(config_path=self.config_path)]
        required += [CalibrationTask(config_path=self.config_path, name=dep) for dep in info.depends_on]
        if info.stage == STAGE_CDST:
            required += [CdstProduction(config_path=self.config_path, run_number=run)
                         for run in production_runs(ctx.cfg)]
        return required

    # --- the steps ----------------------------------------------------------------------------
    def run(self) -> None:
        work = self.ctx.calibration_dir(self.name)
        work.mkdir(parents=True, exist_ok=True)
        # One runner at a time per calibration, across processes: a worker orphaned by a killed driver
        # may still be finishing this calibration when a rerun starts.
        with open(work / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.output_path().is_file():  # finished by that other process meanwhile
                return
            self._run_steps()

    def _run_steps(self) -> None:
        ctx = self.ctx
        info = ctx.catalogue[self.name]
        stage, level = ctx.plan.group_of(self.name)
        work = ctx.calibration_dir(self.name)
        work.mkdir(parents=True, exist_ok=True)
        start = self.now()
        steps: dict[str, dict[str, Any]] = {}
        ctx.emit("task_started", self.name, stage=stage, group=level)
        current = "caf_config"
        log_path = work / "calibrate.log"
        try:
            self._check_upstream(info)
            current = "caf_config"
            caf_config = self._step(steps, current, lambda: self._write_caf_config(info, work))
            current = "input_data"
            input_data = self._step(steps, current, lambda: self._write_input_data(info, work))
            current = "calibrate"
            self._step(steps, current, lambda: self._calibrate(caf_config, input_data, work, log_path))
            current = "validate"
            verdict = self._step(steps, current, lambda: self._validate(info, work, input_data))
            current = "import_payloads"
            passed = verdict is None or verdict.passed
            if passed:
                payloads = self._step(steps, current, lambda: self._import_payloads(work))
            else:
                payloads = []
                steps[current] = {"state": "skipped", "start": self.now(), "duration": 0.0}
                ctx.emit("step", self.name, step=current, state="skipped",
                         detail="validation failed: payloads not published to the prompt global tag")
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            ctx.emit("step", self.name, step=current, state="failed", detail=reason)
            tail_source = log_path if current in ("calibrate", "validate") else None
            if current == "validate":
                tail_source = work / "validate.log"
            ctx.emit("task_failed", self.name, reason=f"{current}: {reason}",
                     log_tail=log_tail(tail_source) if tail_source else "", log_path=str(tail_source or ""),
                     duration=self.now() - start, validation_failed=False)
            raise
        status = STATUS_SUCCESS if passed else STATUS_VALIDATION_FAILED
        duration = self.now() - start
        if passed:
            ctx.emit("task_succeeded", self.name, duration=duration)
        else:
            ctx.emit("task_failed", self.name, reason="validation failed: " + (verdict.message if verdict else ""),
                     log_tail=log_tail(work / "validate.log"), log_path=str(work / "validate.log"),
                     duration=duration, validation_failed=True)
        write_json_atomic(self.output_path(), {
            "name": self.name, "status": status, "stage": stage, "group": level, "start": start,
            "duration": duration, "steps": steps, "payloads": payloads,
            "verdict": verdict.to_dict() if verdict else None, "settings_commit": ctx.settings().get("commit")})

    def _step(self, steps: dict, step: str, action):
        self.ctx.emit("step", self.name, step=step, state="running")
        start = self.now()
        value = action()
        steps[step] = {"state": "done", "start": start, "duration": self.now() - start}
        self.ctx.emit("step", self.name, step=step, state="done")
        return value

    def _check_upstream(self, info) -> None:
        """Upstream calibrations whose validation failed stop this one (unless configured to continue)."""
        if self.ctx.cfg.calibrations.on_validation_failure == "continue":
            return
        for dep in info.depends_on:
            result = calibration_result(self.ctx, dep)
            if result and result["status"] == STATUS_VALIDATION_FAILED:
                raise CalibrationFailed(
                    f"upstream calibration {dep} failed its validation, so its payloads are not in the prompt "
                    f"global tag; not running {self.name} (calibrations.on_validation_failure: stop)")

    def _write_caf_config(self, info, work: Path) -> Path:
        ctx, cfg = self.ctx, self.ctx.cfg
        settings = ctx.settings()
        overrides = {**cfg.calibrations.expert_config.get(self.name, {}),
                     **settings.get("expert_configs", {}).get(self.name, {})}
        resources = cfg.batch.resources_for(self.name)
        document = {
            "caf_script": str(info.script_path),
            "database_chain": list(cfg.conditions.database_chain),
            "backend_args": {"queue": resources.queue, "cpus": resources.cpus, "memory_mb": resources.memory_mb,
                             "walltime_min": resources.walltime_min},
            "requested_iov": cfg.requested_iov.as_list(),
            "expert_config": info.merged_expert_config(overrides),
            "testing_payloads": str(ctx.prompt_tag.db.database_txt),
            # b2luca's own additions (ignored by b2caf-prompt-run): where local global tags live, provenance.
            "b2luca": {"bucket": cfg.name, "conditions_directory": str(cfg.conditions.directory),
                       "settings_commit": settings.get("commit")},
        }
        path = work / "caf_config.json"
        write_json_atomic(path, document)
        return path

    def _write_input_data(self, info, work: Path) -> Path:
        ctx, cfg = self.ctx, self.ctx.cfg
        root = cfg.data.raw_directory if info.stage == STAGE_RAW else cfg.data.cdst_directory
        document = build_input_data(info.settings, read_snapshot(cfg.rundb.snapshot), root)
        empty = [name for name, entries in document.items() if not entries]
        if empty:
            raise CalibrationFailed(f"no input data for {', '.join(empty)} in {root} after the input_data_filters "
                                    f"(runs {cfg.bucket.first_run}-{cfg.bucket.last_run})")
        path = work / "input_data.json"
        write_json_atomic(path, document)
        runs = sorted({tuple(e[1]) for entries in document.values() for e in entries})
        ctx.emit("input_runs", self.name, requested_iov=cfg.requested_iov.as_list(), runs=[list(r) for r in runs],
                 files={name: len(entries) for name, entries in document.items()})
        return path

    def _calibrate(self, caf_config: Path, input_data: Path, work: Path, log_path: Path) -> None:
        out = output_database(work, self.name)
        if out.exists():  # a previous, unfinished attempt: its partial output must not leak into this one
            shutil.rmtree(out)
        log_path.unlink(missing_ok=True)
        reads = work / READS_FILE
        reads.unlink(missing_ok=True)
        result = runner_for(self.ctx.cfg).calibrate(caf_config, input_data, work, log_path)
        if not result.ok:
            cause = cause_from_log(log_path)
            raise CalibrationFailed(f"calibration script exited with code {result.returncode}"
                                    + (f": {cause}" if cause else "") + f" (log {log_path})")
        check_reads(self.ctx.catalogue, self.ctx.plan, self.name, reads)

    def _validate(self, info, work: Path, input_data: Path) -> Verdict | None:
        if info.validation_path is None:
            self.ctx.emit("validation", self.name, passed=True, figures={}, plots=[],
                          message="no validation script for this calibration")
            return None
        out_dir = work / "validation"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir()
        log_path = work / "validate.log"
        log_path.unlink(missing_ok=True)
        verdict_path = work / "verdict.json"
        result = runner_for(self.ctx.cfg).validate(info.validation_path, work, input_data, verdict_path,
                                                          out_dir, log_path, self.ctx.reference_paths())
        if not result.ok or not verdict_path.is_file():
            cause = cause_from_log(log_path)
            raise CalibrationFailed(f"validation script exited with code {result.returncode}"
                                    + (f": {cause}" if cause else "") + f" (log {log_path})")
        verdict = Verdict.load(verdict_path)
        plots = [str(p if Path(p).is_absolute() else out_dir / p) for p in verdict.plots]
        self.ctx.emit("validation", self.name, passed=verdict.passed, figures=verdict.figures, plots=plots,
                      message=verdict.message)
        return verdict

    def _import_payloads(self, work: Path) -> list[dict[str, Any]]:
        """Copy the runner's output payloads into the prompt global tag, IoV open-ended from the bucket start."""
        ctx, cfg = self.ctx, self.ctx.cfg
        source = LocalDatabase(output_database(work, self.name))
        prompt = ctx.prompt_tag
        latest = {}
        for entry in source.entries():  # the last line of each payload is the result
            latest[entry.name] = entry
        imported = []
        for name, entry in latest.items():
            stored = prompt.store(name, source.read(entry), cfg.prompt_iov)
            imported.append({"name": stored.name, "revision": stored.revision, "iov": str(stored.iov)})
        ctx.emit("payloads", self.name, global_tag=cfg.conditions.prompt_global_tag, payloads=imported)
        return imported


class GroupTask(BucketWrapperTask):
    """The calibrations of one plan group (no calibration depends on another in the group)."""

    stage = luigi.Parameter()
    level = luigi.IntParameter()

    def requires(self):
        names = self.ctx.plan.stage(self.stage).groups[self.level]
        return [CalibrationTask(config_path=self.config_path, name=name) for name in names]

