"""``reported(...)``: the events around a task's work, for success, failure, a failed validation and a veto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from b2luca.tasks.reporting import reported


class RecordingContext:
    """Stands in for BucketContext: ``reported`` only calls ``emit``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []

    def emit(self, kind: str, task: str | None = None, **data: Any) -> None:
        self.events.append((kind, task, data))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


def test_success_emits_started_then_succeeded_with_a_duration():
    ctx = RecordingContext()
    with reported(ctx, "LocalPXD:tag", stage="local", group="local") as report:  # type: ignore[arg-type]
        ctx.emit("payloads", "LocalPXD:tag", payloads=[])
    assert ctx.kinds() == ["task_started", "payloads", "task_succeeded"]
    assert ctx.events[0][2] == {"stage": "local", "group": "local"}
    assert ctx.events[-1][2]["duration"] == report.duration >= 0


def test_failure_without_step_reports_the_message_and_reraises():
    ctx = RecordingContext()
    with pytest.raises(ValueError, match="bad payload"):
        with reported(ctx, "CdstProduction:r00001", stage="cdst_production", group="cdst_production"):  # type: ignore[arg-type]
            raise ValueError("bad payload")
    assert ctx.kinds() == ["task_started", "task_failed"]
    data = ctx.events[-1][2]
    assert (data["reason"], data["log_tail"], data["log_path"], data["validation_failed"]) == (
        "bad payload", "", "", False)


def test_failure_in_a_step_names_the_step_and_carries_the_log_tail(tmp_path: Path):
    ctx = RecordingContext()
    log = tmp_path / "calibrate.log"
    log.write_text("first line\nTraceback: the real cause\n")
    with pytest.raises(RuntimeError):
        with reported(ctx, "CDCTimeZeros", stage="raw", group=0) as report:  # type: ignore[arg-type]
            report.step, report.log_path = "calibrate", log
            raise RuntimeError()
    assert ctx.kinds() == ["task_started", "step", "task_failed"]
    assert ctx.events[1][2] == {"step": "calibrate", "state": "failed", "detail": "RuntimeError"}
    data = ctx.events[-1][2]
    assert data["reason"] == "calibrate: RuntimeError"
    assert "the real cause" in data["log_tail"] and data["log_path"] == str(log)


def test_validation_failure_ends_as_task_failed_without_raising(tmp_path: Path):
    ctx = RecordingContext()
    log = tmp_path / "validate.log"
    log.write_text("chi2 too large\n")
    with reported(ctx, "BeamSpot", stage="cdst", group=0) as report:  # type: ignore[arg-type]
        report.validation_failed("validation failed: chi2 too large", log)
    assert ctx.kinds() == ["task_started", "task_failed"]
    data = ctx.events[-1][2]
    assert data["validation_failed"] is True and data["reason"] == "validation failed: chi2 too large"
    assert "chi2 too large" in data["log_tail"]


def test_veto_ends_as_task_failed_marked_vetoed_without_raising():
    ctx = RecordingContext()
    with reported(ctx, "CDCTimeZeros", stage="raw", group=0) as report:  # type: ignore[arg-type]
        report.vetoed("CDCTimeZeros: change above max_change")
    assert ctx.kinds() == ["task_started", "task_failed"]
    data = ctx.events[-1][2]
    assert data["vetoed"] is True and data["validation_failed"] is False
    assert data["reason"] == "CDCTimeZeros: change above max_change" and data["log_path"] == ""


class LaterContext(RecordingContext):
    """Also stands in for ``emit_later``: queued events go out with the next ``emit``."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[tuple[str, str | None, dict[str, Any]]] = []
        self.appends: list[list[str]] = []

    def emit_later(self, kind: str, task: str | None = None, **data: Any) -> None:
        self.queued.append((kind, task, data))

    def emit(self, kind: str, task: str | None = None, **data: Any) -> None:
        batch = [*self.queued, (kind, task, data)]
        self.queued.clear()
        self.events.extend(batch)
        self.appends.append([k for k, _, _ in batch])


def test_start_later_sends_task_started_with_the_first_event_and_before_a_failure():
    ctx = LaterContext()
    with reported(ctx, "X", stage="raw", group=0, start_later=True):  # type: ignore[arg-type]
        assert ctx.events == []  # nothing appended before the block's first event
        ctx.emit("step", "X", step="caf_config", state="running")
    assert ctx.appends == [["task_started", "step"], ["task_succeeded"]]
    ctx = LaterContext()
    with pytest.raises(RuntimeError):
        with reported(ctx, "X", stage="raw", group=0, start_later=True):  # type: ignore[arg-type]
            raise RuntimeError("upstream failed")
    assert ctx.appends == [["task_started", "task_failed"]]
