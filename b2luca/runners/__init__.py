"""Runners: how one calibration script is executed (native Python now; basf2's b2caf-prompt-run plugs in here)."""

from ..enums import RunnerType
from .base import OUTPUT_DB_DIR, RunnerError, RunResult, log_tail, output_database
from .native import NativeRunner


def runner_for(cfg) -> NativeRunner:
    """The runner a bucket config selects; it never passes the bucket's secrets to scripts."""
    runner_cfg = cfg.runner
    secrets = tuple(n for n in (cfg.report.gitlab.token_env if cfg.report.gitlab else None, cfg.rundb.api_key_env) if n)
    if runner_cfg.type == RunnerType.NATIVE:
        return NativeRunner(timeout_min=runner_cfg.timeout_min, secret_names=secrets)
    raise RunnerError(f"runner type '{runner_cfg.type}' is not available in this installation "
                      "(the basf2 runner needs b2caf-prompt-run)")


__all__ = ["NativeRunner", "OUTPUT_DB_DIR", "RunResult", "RunnerError", "log_tail", "output_database", "runner_for"]
