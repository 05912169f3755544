"""The basf2 runner: runs a calibration with basf2's ``b2caf-prompt-run`` and its validation with ``b2val-prompt-run``.

Both run in the calibration's work dir inside the basf2 environment: ``runner.basf2.setup`` (shell text,
e.g. ``source /cvmfs/belle.cern.ch/tools/b2setup release-09-00-00``) runs through ``bash -c`` before the
tool, with an environment that holds none of the bucket's secrets. The command is::

    b2caf-prompt-run <Local|LSF|PBS|HTCondor> caf_config.json input_data.json --heartbeat N [--permissive]

``--permissive`` is given when caf_config.json names the script by a full path or carries
``testing_payloads`` (basf2 refuses both otherwise). A rerun resumes the CAF from
``calibration_results/caf_state.db`` (no ``--overwrite-working-dir``) unless every calibration there is
already completed, in which case the rerun is a fresh start. A CAF failure is a non-zero exit or a
failed state in caf_state.db; the states are returned with the result for the report.

Validation: ``validation_config.json`` (validation_script, job_path, input_data_path, requested_iov,
expert_config, download_files, backend_args) and ``b2val-prompt-run <backend> validation_config.json``,
run in ``<work>/validation``; its ``validation_results/`` plots become the verdict's plots, and the
verdict passes when the tool succeeds (basf2 validations produce plots, not verdicts).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..contract import Verdict
from ..errors import RunnerError
from .base import RunResult, child_environment, run_logged
from .caf_state import read_caf_state

__all__ = ["Basf2Runner", "PLOT_SUFFIXES"]

PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg")
#: caf_config.json backend_args derived from b2luca's batch resources, per CAF backend.
_RESOURCE_ARGS = {
    "Local": lambda r: {"max_processes": r.cpus},
    "LSF": lambda r: {"queue": r.queue} if r.queue else {},
    "PBS": lambda r: {"queue": r.queue} if r.queue else {},
    "HTCondor": lambda r: {"request_memory": f"{r.memory_mb} MB"},
}


class Basf2Runner:
    """Run prompt calibration and validation scripts with basf2's command-line tools."""

    name = "basf2"

    def __init__(self, runner_cfg: Any, secret_names: tuple[str, ...] = ()) -> None:
        self.cfg = runner_cfg
        self.setup = runner_cfg.basf2.setup
        self.timeout = runner_cfg.timeout_min * 60 if runner_cfg.timeout_min else None
        self.secret_names = secret_names

    # --- shared -------------------------------------------------------------------------------
    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run through ``bash -c`` after the basf2 setup text (which must succeed)."""
        script = "set -e\n" + (self.setup.strip() + "\n" if self.setup.strip() else "") + 'set +e\nexec "$@"\n'
        return ["bash", "-c", script, "b2luca-basf2", *argv]

    def _run(self, argv: list[str], cwd: Path, log_path: Path) -> RunResult:
        return run_logged(self.wrap(argv), cwd=cwd, log_path=log_path, env=child_environment(self.secret_names),
                          timeout=self.timeout)

    def backend_args(self, calibration: str, resources: Any) -> dict[str, Any]:
        """caf_config.json ``backend_args``: from the batch resources, then the YAML's per-calibration ones."""
        derived = _RESOURCE_ARGS[self.cfg.backend](resources)
        return {**derived, **self.cfg.basf2.backend_args.get(calibration, {})}

    # --- calibration --------------------------------------------------------------------------
    def calibrate(self, caf_config: Path, input_data: Path, work_dir: Path, log_path: Path) -> RunResult:
        """Run b2caf-prompt-run on the two files in ``work_dir``; resumes an unfinished CAF there."""
        config = json.loads(Path(caf_config).read_text())
        argv = [self.cfg.command, self.cfg.backend, str(caf_config), str(input_data),
                "--heartbeat", str(self.cfg.basf2.heartbeat)]
        if "/" in str(config.get("caf_script", "")) or config.get("testing_payloads"):
            argv.append("--permissive")
        try:
            previous = read_caf_state(work_dir)
        except sqlite3.Error as exc:
            raise RunnerError(f"{work_dir / 'calibration_results' / 'caf_state.db'}: unreadable CAF state: "
                              f"{exc}") from None
        if previous and all(s.completed for s in previous):
            argv.append("--overwrite-working-dir")  # a finished CAF rerun on purpose: start afresh
        result = self._run(argv, work_dir, log_path)
        try:
            states = tuple(read_caf_state(work_dir))
        except sqlite3.Error:
            states = ()
        return RunResult(result.returncode, result.log_path, result.duration, result.command, caf_state=states)

    # --- validation ---------------------------------------------------------------------------
    def validate(self, validation_script: Path, job_path: Path, input_data: Path, verdict_path: Path,
                 work_dir: Path, log_path: Path, reference: list[str] | None) -> RunResult:
        """Run b2val-prompt-run in ``work_dir``; the verdict: passed when it succeeded, plots from
        ``validation_results/``. ``reference`` (simulation truth) is a native-only extra and unused here."""
        caf = json.loads((Path(job_path) / "caf_config.json").read_text())
        config = {"validation_script": str(validation_script), "job_path": str(job_path),
                  "input_data_path": str(input_data), "requested_iov": caf["requested_iov"],
                  "expert_config": caf.get("expert_config", {}), "download_files": [],
                  "backend_args": caf.get("backend_args", {})}
        config_path = Path(work_dir) / "validation_config.json"
        write_json_atomic(config_path, config)
        argv = [self.cfg.basf2.validation_command, self.cfg.backend, str(config_path),
                "--heartbeat", str(self.cfg.basf2.heartbeat)]
        result = self._run(argv, work_dir, log_path)
        results = Path(work_dir) / "validation_results"
        plots = sorted(str(p) for p in results.rglob("*") if p.suffix.lower() in PLOT_SUFFIXES) \
            if results.is_dir() else []
        if result.ok:
            Verdict(passed=True, figures={}, plots=plots,
                    message=f"b2val-prompt-run succeeded; {len(plots)} plot(s) for the expert to review").save(
                verdict_path)
        return result
