"""Events, the outbox (multi-process appends, cursors) and the local Markdown transport."""

from __future__ import annotations

import json
import shutil
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from b2luca.config import ReportConfig
from b2luca.report import EventError, ReportEvent, local_issue_path, open_reporter, read_signoffs
from b2luca.report.markdown import parse_checklist, parse_marker
from b2luca.report.outbox import Outbox

from .conftest import BUCKET, CALIBRATIONS, PLAN, SECRET_LOG_LINE, emit_bucket, emit_calibration

LOCAL = ReportConfig(transport="local")


def test_event_json_round_trip() -> None:
    ev = ReportEvent("validation", "demo", "X", {"figures": {"a": np.float64(1.5), "n": np.int64(3)},
                                                 "plots": [Path("/p/x.png")], "passed": np.bool_(True)}, 12.5, 4)
    back = ReportEvent.from_json(ev.to_json())
    assert back.to_dict() == ev.to_dict()
    assert back.data == {"figures": {"a": 1.5, "n": 3}, "plots": ["/p/x.png"], "passed": True}
    with pytest.raises(EventError, match="unknown report event kind"):
        ReportEvent("nope", "demo", None).validate()
    with pytest.raises(EventError, match="needs a task"):
        ReportEvent("task_started", "demo", None).validate()
    with pytest.raises(EventError, match="unknown step"):
        ReportEvent("step", "demo", "X", {"step": "fit", "state": "done"}).validate()


def test_emit_rejects_bad_events_but_not_disk_trouble(tmp_path: Path) -> None:
    rep = open_reporter(LOCAL, tmp_path, BUCKET)
    with pytest.raises(EventError, match="not JSON-serialisable"):
        rep.emit("task_started", "X", stage=object())
    assert Outbox(tmp_path / "report").read_events() == []


def _worker(work_dir: str, name: str, n: int) -> None:
    rep = open_reporter(LOCAL, Path(work_dir), BUCKET)
    for i in range(n):
        rep.emit("step", name, step="calibrate", state="running" if i % 2 == 0 else "done", detail=f"{name}-{i}")


def test_concurrent_processes_get_unique_ordered_seqs(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), f"T{k}", 30)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    events = Outbox(tmp_path / "report").read_events()
    assert [e.seq for e in events] == list(range(1, 121))
    for k in range(4):  # each process's events keep their order
        mine = [int(e.data["detail"].split("-")[1]) for e in events if e.task == f"T{k}"]
        assert mine == list(range(30))
    cursor = json.loads((tmp_path / "report" / "cursors" / "local.json").read_text())
    assert cursor["seq"] == 120


def test_torn_last_line_is_cut(tmp_path: Path) -> None:
    rep = open_reporter(LOCAL, tmp_path, BUCKET)
    rep.emit("task_started", "A", stage="raw", group=0)
    path = tmp_path / "report" / "events.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"step","bucket":"demo","ta')  # crash mid-append
    assert [e.seq for e in Outbox(tmp_path / "report").read_events()] == [1]
    rep.emit("task_succeeded", "A", duration=1.0)
    lines = path.read_text().splitlines()
    assert [json.loads(x)["seq"] for x in lines] == [1, 2]


def test_local_reports(tmp_path: Path) -> None:
    rep = open_reporter(LOCAL, tmp_path, BUCKET)
    emit_bucket(rep, tmp_path, fail={"BeamSpot": "calibrate", "CDCDedx": "validation"})
    assert rep.flush() == 0
    issues = tmp_path / "report" / "issues"
    assert sorted(p.stem for p in issues.glob("*.md")) == sorted(CALIBRATIONS)
    cdc = (issues / "CDCTimeZeros.md").read_text()
    assert parse_marker(cdc) == (BUCKET, "CDCTimeZeros")
    assert cdc.startswith("<!-- b2luca:bucket=demo;calibration=CDCTimeZeros -->")
    assert "**Status:** `success`" in cdc and "@alice" in cdc
    for step in ("caf_config", "input_data", "calibrate", "validate", "import_payloads"):
        assert f"| {step} | done |" in cdc
    assert "Requested IoV: `(0, 1, -1, -1)`" in cdc
    assert "exp 0: runs 1-3, 5 (4 runs)" in cdc and "`hadron_calib`: 4" in cdc
    assert "| CDCTimeZeros | 1 | `(0, 1, -1, -1)` |" in cdc and "Global tag: `demo_prompt`" in cdc
    assert "| pull_width | 1.03 |" in cdc
    assert "- [ ] payloads reviewed\n- [ ] sign-off" in cdc
    link = "../../plots/CDCTimeZeros_residuals.png"
    assert f"![CDCTimeZeros_residuals.png]({link})" in cdc and (issues / link).resolve().is_file()
    beam = (issues / "BeamSpot.md").read_text()
    assert "**Status:** `failed`" in beam and "| calibrate | failed (exit code 3) |" in beam
    assert "<details><summary>log tail (" in beam and "</summary>\n\n```" in beam
    assert SECRET_LOG_LINE in beam and "\n\n</details>" in beam
    dedx = (issues / "CDCDedx.md").read_text()
    assert "**Status:** `validation-failed`" in dedx and "**FAILED**: pull width 3.1 > 1.2" in dedx
    assert "| import_payloads | skipped |" in dedx
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert parse_marker(summary) == (BUCKET, None)
    for entry in PLAN:
        assert f"| {entry['name']} |" in summary
    assert "| raw | 1 | BeamSpot | `failed` | 1.5 s | [issue](issues/BeamSpot.md) |" in summary
    assert "| archive | raw | ArchiveLogs(raw) | `success` |" in summary
    assert "`raw`: `/archive/demo/2026-11-24/raw`" in summary
    assert "**Verdict:** `failed`" in summary and "**FAILED**" in summary
    assert (tmp_path / "report" / "summary.md").stat().st_mode & 0o044  # readable by the group/others
    assert local_issue_path(tmp_path, "Local:tag").parent == issues
    assert "0123abcd" in summary


def test_local_signoff_survives_rerender_until_new_attempt(tmp_path: Path) -> None:
    rep = open_reporter(LOCAL, tmp_path, BUCKET)
    emit_bucket(rep, tmp_path)
    path = tmp_path / "report" / "issues" / "SVDTimeOffsets.md"
    path.write_text(path.read_text().replace("- [ ] sign-off", "- [x] sign-off"))
    so = read_signoffs(LOCAL, tmp_path, BUCKET)
    assert set(so) == set(CALIBRATIONS)
    assert str(so["SVDTimeOffsets"]).startswith("signed off (checklist)")
    assert so["SVDTimeOffsets"].signed_off and so["SVDTimeOffsets"].checklist
    assert not so["CDCTimeZeros"].signed_off and not so["SVDTimeOffsets"].label
    rep.emit("bucket_finished", success=True, counts={"success": 7})  # re-renders everything
    assert parse_checklist(path.read_text())["sign-off"]
    emit_calibration(rep, "SVDTimeOffsets", tmp_path / "plots", revision=2)  # a new attempt
    assert not parse_checklist(path.read_text())["sign-off"]
    assert "**Attempt:** 2" in path.read_text()


def test_the_event_log_is_read_incrementally_and_afresh_when_replaced(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "report")
    rep = open_reporter(LOCAL, tmp_path, BUCKET)
    rep.emit("task_started", "A", stage="raw", group=0)
    assert [e.seq for e in box.read_events()] == [1]
    other = open_reporter(LOCAL, tmp_path, BUCKET)  # another process's reporter appends
    other.emit("task_succeeded", "A", duration=1.0)
    path = tmp_path / "report" / "events.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"step","bucket":"demo","ta')  # being written right now: not read yet
    assert [e.seq for e in box.read_events()] == [1, 2]
    assert box._cache is not None and box._cache.offset == len(path.read_bytes()) - 34
    parsed = box._cache.events
    rep.emit("task_started", "B", stage="raw", group=0)  # cuts the torn line, appends seq 3
    assert [(e.seq, e.task) for e in box.read_events()] == [(1, "A"), (2, "A"), (3, "B")]
    # a read never extends a list another thread of the process may be reading from
    assert [e.seq for e in parsed] == [1, 2] and box._cache.events is not parsed
    # a fresh outbox (the report dir removed for a clean rerun) is read afresh, not from the old offset
    shutil.rmtree(tmp_path / "report")
    fresh = open_reporter(LOCAL, tmp_path, BUCKET)
    fresh.emit("task_started", "C", stage="raw", group=0)
    assert [(e.seq, e.task) for e in box.read_events()] == [(1, "C")]
    assert box.read_events() == Outbox(tmp_path / "report").read_events()


def test_a_bucket_run_coalesces_the_local_rendering(tmp_path: Path) -> None:
    rep = open_reporter(LOCAL, tmp_path, BUCKET, local_interval_s=3600.0)
    summary = tmp_path / "report" / "summary.md"
    rep.emit("bucket_started", requested_iov=[0, 1, -1, -1], settings_commit=None, work_dir=str(tmp_path), plan=PLAN)
    assert summary.is_file()  # the first event renders at once
    first = summary.read_text()
    for name in ("CDCTimeZeros", "SVDTimeOffsets"):
        rep.emit("task_started", name, stage="raw", group=0)
        rep.emit("task_succeeded", name, duration=2.0)
    assert summary.read_text() == first  # not due: the events wait, durably appended
    assert [e.seq for e in Outbox(tmp_path / "report").read_events()] == [1, 2, 3, 4, 5]
    rep.deliver_local()
    assert summary.read_text() == first  # the driver's tick respects the interval too
    assert rep.flush() == 0  # the final flush renders everything
    assert summary.read_text() != first and "| CDCTimeZeros |" in summary.read_text()
    assert "`success`" in (tmp_path / "report" / "issues" / "SVDTimeOffsets.md").read_text()
    # an unchanged file is not rewritten (same inode, same mtime)
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((tmp_path / "report").rglob("*.md"))]
    rep.flush()
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((tmp_path / "report").rglob("*.md"))] == before
    # a reporter without the interval (the default) renders on every event
    eager = open_reporter(LOCAL, tmp_path, BUCKET)
    eager.emit("task_started", "BeamSpot", stage="raw", group=1)
    assert "`running`" in (tmp_path / "report" / "issues" / "BeamSpot.md").read_text()


def test_incremental_folding_equals_a_full_fold(tmp_path: Path) -> None:
    from b2luca.report.markdown import render_summary
    from b2luca.report.state import fold

    rep = open_reporter(LOCAL, tmp_path, BUCKET)
    emit_bucket(rep, tmp_path, fail={"BeamSpot": "calibrate"})
    local = rep.transports[0]
    events = Outbox(tmp_path / "report").read_events()
    assert local._folded is not None and local._folded[1] == events[-1].seq
    full = fold(BUCKET, events)
    assert render_summary(local._folded[2], {}) == render_summary(full, {})
    assert local._folded[2] == full


def test_emit_many_appends_in_order_with_one_fsync_and_consecutive_seqs(tmp_path: Path, monkeypatch) -> None:
    rep = open_reporter(LOCAL, tmp_path, BUCKET)
    rep.emit("task_started", "X", stage="raw", group=0)
    fsyncs: list[int] = []
    real = __import__("os").fsync

    def fsync(fd: int) -> None:  # the events log's (the local transport writes its files too)
        if __import__("os").readlink(f"/proc/self/fd/{fd}").endswith("events.jsonl"):
            fsyncs.append(fd)
        real(fd)

    monkeypatch.setattr("b2luca.report.outbox.os.fsync", fsync)
    made = [rep.event("step", "X", step="caf_config", state="done"),
            rep.event("step", "X", step="input_data", state="running")]
    rep.emit_many(made)
    assert len(fsyncs) == 1
    events = Outbox(tmp_path / "report").read_events()
    assert [(e.seq, e.kind, e.data.get("step")) for e in events] == [
        (1, "task_started", None), (2, "step", "caf_config"), (3, "step", "input_data")]
    assert events[1].time == made[0].time <= events[2].time  # stamped when made, not when appended
    rep.emit_many([])  # nothing to append: no write
    assert len(fsyncs) == 1 and len(Outbox(tmp_path / "report").read_events()) == 3
    with pytest.raises(EventError, match="unknown step"):
        rep.event("step", "X", step="fit", state="done")
