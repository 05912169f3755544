"""Fixtures for the reporting tests: the fake GitLab server and a DAG-shaped event stream."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from b2luca.config import GitLabConfig, ReportConfig
from b2luca.report import Reporter
from b2luca.report import outbox as outbox_mod

from .fake_gitlab import FakeGitLab

TOKEN_ENV = "B2LUCA_TEST_GITLAB_TOKEN"
BUCKET = "demo"


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small back-off so the tests stay fast."""
    monkeypatch.setattr(outbox_mod, "BACKOFF_BASE_S", 0.2)
    monkeypatch.setattr(outbox_mod, "BACKOFF_MAX_S", 1.0)


@pytest.fixture
def fake_gitlab() -> Any:
    server = FakeGitLab().start()
    yield server
    server.stop()


@dataclass(frozen=True)
class FastGitLabConfig(GitLabConfig):
    """GitLabConfig with small retry numbers for the tests."""

    max_retries: int = 1
    max_retry_after: float = 5.0
    rate_limit_retries: int = 3


@pytest.fixture
def gitlab_cfg(fake_gitlab: FakeGitLab, monkeypatch: pytest.MonkeyPatch) -> ReportConfig:
    monkeypatch.setenv(TOKEN_ENV, fake_gitlab.token)
    return ReportConfig(
        transport="gitlab",
        gitlab=FastGitLabConfig(url=fake_gitlab.url, project=fake_gitlab.project_path, token_env=TOKEN_ENV,
                                  timeout=2.0),
    )


def make_plot(path: Path) -> str:
    """A tiny PNG-like file (content irrelevant for the transport)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return str(path)


PLAN: list[dict[str, Any]] = [
    {"name": "LocalPXDMasks", "stage": "local", "group": "local", "kind": "local", "expert": "carol",
     "description": "copy PXD masks", "depends_on": [], "produced_payloads": ["PXDMasks"]},
    {"name": "CDCTimeZeros", "stage": "raw", "group": 0, "kind": "calibration", "expert": "alice",
     "description": "CDC time offsets per board", "depends_on": [], "produced_payloads": ["CDCTimeZeros"]},
    {"name": "SVDTimeOffsets", "stage": "raw", "group": 0, "kind": "calibration", "expert": "bob",
     "description": "SVD time offsets per sensor", "depends_on": [], "produced_payloads": ["SVDTimeOffsets"]},
    {"name": "BeamSpot", "stage": "raw", "group": 1, "kind": "calibration", "expert": "nobody-here",
     "description": "beam spot", "depends_on": ["CDCTimeZeros"], "produced_payloads": ["BeamSpot"]},
    {"name": "CdstProduction", "stage": "cdst_production", "group": "cdst_production", "kind": "cdst_production",
     "expert": None, "description": "cDST production", "depends_on": [], "produced_payloads": []},
    {"name": "CDCDedx", "stage": "cdst", "group": 0, "kind": "calibration", "expert": "alice",
     "description": "dE/dx", "depends_on": ["CDCTimeZeros"], "produced_payloads": ["CDCDedx"]},
    {"name": "ArchiveLogs(raw)", "stage": "archive", "group": "raw", "kind": "archive", "expert": None,
     "description": "archive raw", "depends_on": [], "produced_payloads": []},
]
CALIBRATIONS = [p["name"] for p in PLAN if p["kind"] in ("calibration", "local")]
SECRET_LOG_LINE = "ERROR: fit did not converge (chi2/ndf = 17.3)"


def emit_calibration(rep: Reporter, name: str, plot_dir: Path, fail: str | None = None,
                     validation_fails: bool = False, revision: int = 1) -> None:
    """The events one CalibrationTask emits, in DAG order."""
    entry = next(p for p in PLAN if p["name"] == name)
    rep.emit("task_started", name, stage=entry["stage"], group=entry["group"])
    for step in ("caf_config", "input_data"):
        rep.emit("step", name, step=step, state="running")
        rep.emit("step", name, step=step, state="done")
    rep.emit("input_runs", name, requested_iov=[0, 1, -1, -1], runs=[[0, 1], [0, 2], [0, 3], [0, 5]],
             files={"hadron_calib": 4})
    rep.emit("step", name, step="calibrate", state="running")
    if fail == "calibrate":
        rep.emit("step", name, step="calibrate", state="failed", detail="exit code 3")
        rep.emit("task_failed", name, reason="calibration script exited with code 3",
                 log_tail="line 1\nline 2\n" + SECRET_LOG_LINE, log_path=str(plot_dir / "calibrate.log"),
                 duration=1.5, validation_failed=False)
        return
    rep.emit("step", name, step="calibrate", state="done")
    rep.emit("step", name, step="validate", state="running")
    plot = make_plot(plot_dir / f"{name}_residuals.png")
    rep.emit("validation", name, passed=not validation_fails, figures={"pull_mean": 0.012, "pull_width": 1.03,
             "verdict": "ok" if not validation_fails else "bad"}, plots=[plot],
             message="pulls compatible with N(0,1)" if not validation_fails else "pull width 3.1 > 1.2")
    if validation_fails:
        rep.emit("step", name, step="validate", state="failed")
        rep.emit("step", name, step="import_payloads", state="skipped")
        rep.emit("task_failed", name, reason="validation failed", log_tail="", log_path="", duration=2.0,
                 validation_failed=True)
        return
    rep.emit("step", name, step="validate", state="done")
    rep.emit("step", name, step="import_payloads", state="running")
    rep.emit("payloads", name, global_tag="demo_prompt",
             payloads=[{"name": p, "revision": revision, "iov": "0,1,-1,-1"} for p in entry["produced_payloads"]])
    rep.emit("step", name, step="import_payloads", state="done")
    rep.emit("task_succeeded", name, duration=2.5)


def emit_bucket(rep: Reporter, work_dir: Path, fail: dict[str, str] | None = None,
                stop_after: int | None = None, on_event: Any = None) -> None:
    """A whole bucket run as the DAG emits it.  ``fail``: {name: "calibrate"|"validation"}."""
    fail = fail or {}
    plot_dir = work_dir / "plots"
    rep.emit("bucket_started", requested_iov=[0, 1, -1, -1], settings_commit="0123abcd" * 5,
             work_dir=str(work_dir), plan=PLAN)
    for entry in PLAN:
        name = entry["name"]
        if on_event is not None:
            on_event(name)
        if entry["kind"] in ("calibration", "local"):
            emit_calibration(rep, name, plot_dir, fail="calibrate" if fail.get(name) == "calibrate" else None,
                             validation_fails=fail.get(name) == "validation")
        elif entry["kind"] == "archive":
            rep.emit("task_started", name, stage="archive", group="raw")
            rep.emit("archived", "raw", group="raw", location=f"/archive/{BUCKET}/2026-11-24/raw")
            rep.emit("task_succeeded", name, duration=0.2)
        else:
            rep.emit("task_started", name, stage=entry["stage"], group=entry["group"])
            rep.emit("task_succeeded", name, duration=3.0)
    rep.emit("bucket_finished", success=not fail, counts={"success": len(PLAN) - len(fail), "failed": len(fail)})
