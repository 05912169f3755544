"""The native runner: runs a Python calibration from ``calibrations/`` the way b2caf-prompt-run runs a basf2 one.

It takes the same two files (``caf_config.json``, ``input_data.json``), runs the script in a subprocess
(:mod:`b2luca.runners.native_job`) and leaves ``caf_outputdb_results/<CalibrationName>/{database.txt,
dbstore_*.root}`` in the working directory, exactly like basf2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .base import RunResult, child_environment, run_logged
from .job_server import address_for, run_in_server


class NativeRunner:
    """Run native Python calibration and validation scripts in subprocesses."""

    name = "native"

    def __init__(self, timeout_min: float | None = None, secret_names: tuple[str, ...] = ()) -> None:
        self.timeout = timeout_min * 60 if timeout_min else None
        self.secret_names = secret_names

    def backend_args(self, calibration: str, resources: Any) -> dict[str, Any]:
        """caf_config.json ``backend_args``: b2luca's batch resources of the calibration."""
        return {"queue": resources.queue, "cpus": resources.cpus, "memory_mb": resources.memory_mb,
                "walltime_min": resources.walltime_min}

    def calibrate(self, caf_config: Path, input_data: Path, work_dir: Path, log_path: Path) -> RunResult:
        """Run the calibration script named in ``caf_config`` on ``input_data``."""
        command = [sys.executable, "-m", "b2luca.runners.native_job", "calibrate", str(caf_config), str(input_data)]
        return self._run(command, work_dir, log_path)

    def validate(self, validation_script: Path, job_path: Path, input_data: Path, verdict_path: Path,
                 work_dir: Path, log_path: Path, reference: list[str] | None) -> RunResult:
        """Run ``run_validation`` of ``validation_script``; its verdict is written to ``verdict_path``."""
        command = [sys.executable, "-m", "b2luca.runners.native_job", "validate", str(validation_script),
                   str(job_path), str(input_data), str(verdict_path)]
        for path in reference or []:
            command += ["--reference", path]
        return self._run(command, work_dir, log_path)

    def _run(self, command: list[str], work_dir: Path, log_path: Path) -> RunResult:
        """Through this run's job server when there is one (:mod:`.job_server`), else a fresh subprocess."""
        address = address_for(command)
        if address is not None:
            try:
                return run_in_server(address, command, work_dir, log_path, timeout=self.timeout)
            except OSError:  # no server to take it (ConnectionError, FileNotFoundError): run it ourselves
                pass
        return run_logged(command, cwd=work_dir, log_path=log_path, env=child_environment(self.secret_names),
                          timeout=self.timeout)
