"""The whole DAG reporting to GitLab through python-gitlab, against the stateful fake GitLab over HTTP."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from b2luca.config import load_config
from b2luca.report import flush
from b2luca.report.markdown import summary_title
from b2luca.tasks.context import context_for
from b2luca.tasks.driver import plan_events, run_bucket

from bucket_helpers import EXPERTS, ORCHESTRATION, REPORTING_EVENTS, fast_report_backoff
from report.fake_gitlab import FakeGitLab

pytestmark = pytest.mark.slow

TOKEN_ENV = "B2LUCA_E2E_GITLAB_TOKEN"
EVENTS = REPORTING_EVENTS


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    fast_report_backoff(monkeypatch)


@pytest.fixture()
def gitlab(monkeypatch):
    server = FakeGitLab(users={name: 100 + i for i, name in enumerate(EXPERTS)}).start()
    monkeypatch.setenv(TOKEN_ENV, server.token)
    yield server
    server.stop()


def _bucket(tmp_path: Path, server: FakeGitLab, simulated_bucket) -> Path:
    """A bucket reporting to ``server``, on the session's simulated data (its events are the reporting
    buckets' :data:`REPORTING_EVENTS`), with the calibrations of :data:`ORCHESTRATION`."""
    assert simulated_bucket.events == EVENTS
    return simulated_bucket.config(tmp_path, select=list(ORCHESTRATION), changes={
        "report.transport": "gitlab",
        "report.gitlab": {"url": server.url, "project": server.project_path, "token_env": TOKEN_ENV, "timeout": 2.0}})


def _expected_issue_names(config: Path) -> list[str]:
    ctx = context_for(str(config))
    return [e["name"] for e in plan_events(ctx) if e["kind"] in ("calibration", "local")]


def _issue_texts(server: FakeGitLab) -> list[str]:
    texts = [i.get("description") or "" for i in server.issues] + [i.get("title", "") for i in server.issues]
    texts += [n.get("body", "") for notes in server.notes.values() for n in notes]
    return texts


def _assert_token_nowhere(token: str, *roots: Path, server: FakeGitLab) -> None:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), f"token leaked into {path}"
    assert not any(token in text for text in _issue_texts(server))


def test_demo_bucket_creates_one_issue_per_calibration_and_a_summary(tmp_path, gitlab, simulated_bucket):
    config = _bucket(tmp_path, gitlab, simulated_bucket)
    cfg = load_config(config)
    outcome = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert outcome.exit_code == 0, [(r.name, r.state) for r in outcome.rows]
    expected = _expected_issue_names(config)
    titles = Counter(i["title"] for i in gitlab.issues)
    assert all(count == 1 for count in titles.values()), titles
    assert len(gitlab.issues) == len(expected) + 1  # + the bucket summary
    for name in expected:
        assert f"[demo] {name}" in titles, name
    issue = next(i for i in gitlab.issues if i["title"] == "[demo] SVDTimeOffsets")
    assert "b2luca" in issue["labels"] and "bucket::demo" in issue["labels"] and "status::success" in issue["labels"]
    assert [a["username"] for a in issue["assignees"]] == ["svd_expert"]
    # The summary by its title: an issue that merely mentions SVDTimeOffsets can be a calibration's own
    # (VXDCDCAlignment's lists it among its dependencies, when selected), which carries no archive location.
    summary = next(i for i in gitlab.issues if i["title"] == summary_title("demo"))
    assert "SVDTimeOffsets" in summary["description"]
    assert str(cfg.archive.directory) in summary["description"]

    count = len(gitlab.issues)
    again = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert again.exit_code == 0 and len(gitlab.issues) == count  # a rerun updates, never duplicates
    _assert_token_nowhere(gitlab.token, cfg.work_dir, cfg.archive.directory, server=gitlab)


def test_gitlab_outage_mid_run_never_fails_the_run_and_flush_delivers_once(tmp_path, gitlab, simulated_bucket):
    config = _bucket(tmp_path, gitlab, simulated_bucket)
    cfg = load_config(config)
    port = gitlab.port

    def outage() -> None:  # go down once the first issues exist, for the rest of the run
        deadline = time.time() + 120
        while time.time() < deadline and len(gitlab.issues) < 1:
            time.sleep(0.05)
        gitlab.stop()

    killer = threading.Thread(target=outage, daemon=True)
    killer.start()
    lines: list[str] = []
    outcome = run_bucket(cfg, workers=2, echo=lines.append)
    killer.join()
    assert outcome.exit_code == 0, [(r.name, r.state) for r in outcome.rows]
    # The outage really cut delivery: the driver says what waits in the outbox and how to deliver it.
    assert any("could not be delivered yet" in line and "b2luca report --flush" in line for line in lines), lines
    assert (cfg.work_dir / "report" / "issues" / "SVDTimeOffsets.md").is_file()  # local copy unaffected

    gitlab.port = port
    gitlab.start()
    assert flush(cfg.report, cfg.work_dir, cfg.name) == 0
    titles = Counter(i["title"] for i in gitlab.issues)
    assert len(gitlab.issues) == len(_expected_issue_names(config)) + 1 and max(titles.values()) == 1
    for iid, notes in gitlab.notes.items():
        bodies = Counter(n["body"] for n in notes)
        assert max(bodies.values(), default=1) == 1, f"duplicate note on issue {iid}"
    svd = next(i for i in gitlab.issues if i["title"] == "[demo] SVDTimeOffsets")
    assert "status::success" in svd["labels"]
    assert flush(cfg.report, cfg.work_dir, cfg.name) == 0 and len(gitlab.issues) == sum(titles.values())
    _assert_token_nowhere(gitlab.token, cfg.work_dir, cfg.archive.directory, server=gitlab)
