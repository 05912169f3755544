"""Events, the outbox (multi-process appends, cursors) and the local Markdown transport."""

from __future__ import annotations

import json
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
