"""Runners: how one calibration script is executed (native Python now; basf2's b2caf-prompt-run plugs in here)."""

from .base import OUTPUT_DB_DIR, RunnerError, RunResult, log_tail, output_database
from .native import NativeRunner


def runner_for(runner_cfg) -> NativeRunner:
    """The runner a bucket config selects."""
    if runner_cfg.type == "native":
        return NativeRunner(timeout_min=runner_cfg.timeout_min)
    raise RunnerError(f"runner type {runner_cfg.type!r} is not available in this installation "
                      "(the basf2 runner needs b2caf-prompt-run)")


__all__ = ["NativeRunner", "OUTPUT_DB_DIR", "RunResult", "RunnerError", "log_tail", "output_database", "runner_for"]
