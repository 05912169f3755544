"""Local calibrations against the central conditions database: ``b2conditionsdb iovs copy`` in the basf2 setup.

With ``conditions.backend: central`` the experts' payloads are copied from their source global tag into the
prompt global tag by the conditions-DB service itself::

    b2conditionsdb iovs copy --replace -rf "(p1|p2)" --run-range e1 r1 e2 r2 --set-run-range <source GT> <prompt GT>

run through ``bash -c`` after ``runner.basf2.setup``, with no secret of the bucket in its environment
(b2conditionsdb authenticates with its own per-user token file).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import RunnerError
from ..iov import IoV
from .base import RunResult, child_environment, log_tail, run_logged

__all__ = ["copy_command", "copy_iovs"]


def copy_command(names: Sequence[str], iov: IoV, source_tag: str, destination_tag: str) -> list[str]:
    """The b2conditionsdb command line copying ``names`` (exactly) with their run range set to ``iov``."""
    pattern = "(" + "|".join(re.escape(n) for n in names) + ")"
    return ["b2conditionsdb", "iovs", "copy", "--replace", "-rf", pattern, "--run-range",
            *(str(v) for v in iov.as_list()), "--set-run-range", source_tag, destination_tag]


def copy_iovs(cfg: Any, names: Sequence[str], source_tag: str, log_path: Path) -> RunResult:
    """Run the copy for one source global tag into the bucket's prompt global tag; RunnerError on failure
    (with the log tail)."""
    from .basf2 import Basf2Runner  # the basf2 setup wrapper

    secrets = tuple(n for n in (cfg.report.gitlab.token_env if cfg.report.gitlab else None, cfg.rundb.api_key_env) if n)
    runner = Basf2Runner(cfg.runner, secret_names=secrets)
    argv = runner.wrap(copy_command(names, cfg.prompt_iov, source_tag, cfg.conditions.prompt_global_tag))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = run_logged(argv, cwd=log_path.parent, log_path=log_path, env=child_environment(secrets),
                        timeout=runner.timeout)
    if not result.ok:
        raise RunnerError(f"b2conditionsdb iovs copy from {source_tag} exited with code {result.returncode} "
                          f"(log {log_path}):\n{log_tail(log_path, lines=10)}")
    return result
