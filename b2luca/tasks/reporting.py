"""``reported(...)``: the report events around one task's work (started, then succeeded or failed).

Every task that gets a line in the report wraps its work in :func:`reported`; the events it emits are
the same for all of them, so the report and the GitLab issues tell every task's story the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runners import log_tail
from .context import BucketContext


@dataclass
class Report:
    """What the work inside :func:`reported` tells the report about itself while it runs."""

    start: float = field(default_factory=time.time)
    #: the step now running: a failure emits a ``failed`` step event and its reason names the step
    step: str | None = None
    #: the log whose tail goes into a failure report (None: no log)
    log_path: Path | None = None
    #: set by :meth:`validation_failed`: the work finished, but its validation failed
    validation_failure: tuple[str, Path] | None = None
    #: set by :meth:`vetoed`: validation passed, but the update/veto rule kept the payloads out
    veto: str | None = None
    #: seconds from start to the final event (set when the block ends)
    duration: float | None = None

    def validation_failed(self, reason: str, log_path: Path) -> None:
        """End as ``task_failed`` with ``validation_failed=True`` instead of ``task_succeeded``."""
        self.validation_failure = (reason, log_path)

    def vetoed(self, reason: str) -> None:
        """End as ``task_failed`` with ``vetoed=True``: nothing of the task went into the prompt global tag."""
        self.veto = reason

    def elapsed(self) -> float:
        """Seconds since the task started."""
        return time.time() - self.start


@contextmanager
def reported(ctx: BucketContext, task: str, stage: str, group: Any, start_later: bool = False) -> Iterator[Report]:
    """Emit ``task_started``; then ``task_succeeded``, or ``task_failed`` (re-raising) when the block raises.

    A failure's reason is the exception's message, prefixed with ``report.step`` when a step was
    running (and that step is reported ``failed`` first); the tail of ``report.log_path`` goes with it.
    ``start_later``: ``task_started`` goes out with the block's first event (:meth:`BucketContext.emit_later`),
    for a block that emits one before any work (a calibration's first step).
    """
    report = Report()
    (ctx.emit_later if start_later else ctx.emit)("task_started", task, stage=stage, group=group)
    try:
        yield report
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        if report.step is not None:
            ctx.emit("step", task, step=report.step, state="failed", detail=reason)
            reason = f"{report.step}: {reason}"
        log = report.log_path
        report.duration = report.elapsed()
        ctx.emit("task_failed", task, reason=reason, log_tail=log_tail(log) if log else "",
                 log_path=str(log or ""), duration=report.duration, validation_failed=False)
        raise
    report.duration = report.elapsed()
    if report.veto is not None:
        ctx.emit("task_failed", task, reason=report.veto, log_tail="", log_path="", duration=report.duration,
                 validation_failed=False, vetoed=True)
    elif report.validation_failure is None:
        ctx.emit("task_succeeded", task, duration=report.duration)
    else:
        reason, log = report.validation_failure
        ctx.emit("task_failed", task, reason=reason, log_tail=log_tail(log), log_path=str(log),
                 duration=report.duration, validation_failed=True)
