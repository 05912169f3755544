"""Runners: how one calibration script is executed: native Python, or basf2's b2caf-prompt-run."""

from ..enums import RunnerType
from . import job_server
from .base import OUTPUT_DB_DIR, RunnerError, RunResult, log_tail, output_database
from .basf2 import Basf2Runner
from .caf_state import CafState, read_caf_state
from .native import NativeRunner


def runner_for(cfg) -> NativeRunner | Basf2Runner:
    """The runner a bucket config selects; it never passes the bucket's secrets to scripts."""
    runner_cfg = cfg.runner
    secrets = tuple(n for n in (cfg.report.gitlab.token_env if cfg.report.gitlab else None, cfg.rundb.api_key_env) if n)
    central = cfg.conditions.central
    secrets += (central.token_env,) if central is not None and central.token_env else ()  # conditions-DB token
    if runner_cfg.type == RunnerType.NATIVE:
        return NativeRunner(timeout_min=runner_cfg.timeout_min, secret_names=secrets)
    if runner_cfg.type == RunnerType.BASF2:
        return Basf2Runner(runner_cfg, secret_names=secrets)
    raise RunnerError(f"{cfg.path}: runner.type: {runner_cfg.type!r} is not a runner (native or basf2)")


__all__ = ["Basf2Runner", "CafState", "NativeRunner", "OUTPUT_DB_DIR", "RunResult", "RunnerError", "job_server", "log_tail",
           "output_database", "read_caf_state", "runner_for"]
