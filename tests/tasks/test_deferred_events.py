"""``BucketContext.emit_later``: events made now, appended with the next ``emit`` in one durable append."""

from __future__ import annotations

from pathlib import Path

from b2luca.report.outbox import Outbox
from b2luca.tasks.context import BucketContext


class _Cfg:
    """The parts of a BucketConfig that the context's reporter needs."""

    def __init__(self, work_dir: Path) -> None:
        from b2luca.config import ReportConfig

        self.report = ReportConfig(transport="local")
        self.work_dir = work_dir
        self.name = "demo"


def test_emit_later_waits_for_the_next_emit_and_keeps_the_order(tmp_path: Path, monkeypatch) -> None:
    ctx = BucketContext(_Cfg(tmp_path))  # type: ignore[arg-type]
    appends: list[int] = []
    real = Outbox.append_many

    def counting(self, events):
        appends.append(len(events))
        return real(self, events)

    monkeypatch.setattr(Outbox, "append_many", counting)
    outbox = Outbox(tmp_path / "report")
    ctx.emit("task_started", "X", stage="raw", group=0)
    ctx.emit_later("step", "X", step="caf_config", state="done")
    ctx.emit_later("input_runs", "X", requested_iov=[0, 0, -1, -1], runs=[[0, 1]], files={"a": 1})
    assert [e.kind for e in outbox.read_events()] == ["task_started"]  # queued, not yet appended
    ctx.emit("step", "X", step="input_data", state="running")
    assert appends == [1, 3]
    assert [(e.kind, e.data.get("step")) for e in outbox.read_events()] == [
        ("task_started", None), ("step", "caf_config"), ("input_runs", None), ("step", "input_data")]
    ctx.emit_later("task_succeeded", "X", duration=1.0)
    ctx.flush_events()
    ctx.flush_events()  # nothing left: no append
    assert appends == [1, 3, 1]
    assert outbox.read_events()[-1].kind == "task_succeeded"


def test_a_malformed_later_event_is_logged_not_raised_and_does_not_block_the_others(tmp_path: Path, caplog) -> None:
    ctx = BucketContext(_Cfg(tmp_path))  # type: ignore[arg-type]
    ctx.emit_later("step", "X", step="fit", state="done")  # unknown step: a programming error, logged
    ctx.emit("task_started", "X", stage="raw", group=0)
    assert [e.kind for e in Outbox(tmp_path / "report").read_events()] == ["task_started"]
    assert "not recorded" in caplog.text
