"""GitLab transport against the fake GitLab CE server, through the real python-gitlab client."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import pickle
import re
import time
from pathlib import Path
from typing import Any

import pytest

from b2luca import __version__
from b2luca.config import ReportConfig
from b2luca.report import (
    ReportConfigError,
    flush,
    open_reporter,
    read_signoffs,
)
from b2luca.report.markdown import parse_checklist, parse_marker
from b2luca.report.outbox import Outbox

from .conftest import BUCKET, CALIBRATIONS, PLAN, SECRET_LOG_LINE, TOKEN_ENV, emit_bucket, emit_calibration
from .fake_gitlab import FakeGitLab

NOTE_RE = re.compile(r"<!-- b2luca:note=([0-9a-f]+):(\d+) -->")


def issue_posts(fake: FakeGitLab) -> int:
    return sum(1 for r in fake.requests if r.method == "POST" and r.path.endswith("/issues") and r.status == 201)


def by_marker(fake: FakeGitLab) -> dict[str | None, dict[str, Any]]:
    out: dict[str | None, dict[str, Any]] = {}
    for issue in fake.issues:
        m = parse_marker(issue["description"])
        if m is not None:
            assert m[1] not in out, f"duplicate issue for {m[1]}"
            out[m[1]] = issue
    return out


def note_seqs(fake: FakeGitLab, iid: int) -> list[int]:
    return [int(NOTE_RE.search(n["body"]).group(2)) for n in sorted(fake.notes[iid], key=lambda n: n["id"])]


def test_full_bucket_one_issue_per_calibration(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig,
                                               tmp_path: Path) -> None:
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET)
    emit_bucket(rep, tmp_path, fail={"BeamSpot": "calibrate", "CDCDedx": "validation"})
    assert rep.flush() == 0
    issues = by_marker(fake_gitlab)
    assert sorted(k for k in issues if k) == sorted(CALIBRATIONS) and None in issues
    assert len(fake_gitlab.issues) == len(CALIBRATIONS) + 1
    cdc = issues["CDCTimeZeros"]
    assert cdc["title"] == "[demo] CDCTimeZeros"
    assert sorted(cdc["labels"]) == ["b2luca", "bucket::demo", "stage::raw", "status::success"]
    assert [a["username"] for a in cdc["assignees"]] == ["alice"]
    assert issues["CDCDedx"]["labels"].count("status::validation-failed") == 1
    assert "stage::cdst" in issues["CDCDedx"]["labels"]
    assert "status::failed" in issues["BeamSpot"]["labels"] and issues["BeamSpot"]["assignees"] == []
    assert not any(lab.startswith("status::") and lab != "status::success" for lab in cdc["labels"])
    # labels are only ever changed with explicit add/remove (never a replacing `labels=` list)
    puts = [json.loads(r.body) for r in fake_gitlab.requests if r.method == "PUT"]
    assert puts and all("labels" not in p for p in puts)
    assert any("status::running" in p.get("remove_labels", "") for p in puts)
    # every request identified itself and authenticated with the header only
    assert {r.headers.get("User-Agent") for r in fake_gitlab.requests} == {f"b2luca/{__version__}"}
    # plots uploaded and linked
    assert len(fake_gitlab.uploads) == 4  # one per validated calibration
    up = next(u for u in fake_gitlab.uploads if u["alt"] == "CDCTimeZeros_residuals")
    assert f"]({up['url']})" in cdc["description"]
    assert (tmp_path / "plots" / "CDCTimeZeros_residuals.png").read_bytes() == up["data"]
    # notes: one per step change, @mention on ready-for-review and failure
    bodies = [n["body"] for n in fake_gitlab.notes[cdc["iid"]]]
    assert sum("Step `" in b for b in bodies) == 10
    assert any(b.startswith("@alice ready for review") for b in bodies)
    beam = [n["body"] for n in fake_gitlab.notes[issues["BeamSpot"]["iid"]]]
    assert any(b.startswith("@nobody-here the calibration failed") for b in beam)
    assert SECRET_LOG_LINE in issues["BeamSpot"]["description"]
    assert any(b.startswith("@alice the calibration validation failed")
               for b in (n["body"] for n in fake_gitlab.notes[issues["CDCDedx"]["iid"]]))
    # summary: links to the issues, archive, verdict, settings commit
    summ = issues[None]
    for name in CALIBRATIONS:
        assert f"[issue]({issues[name]['web_url']})" in summ["description"]
    assert "/archive/demo/2026-11-24/raw" in summ["description"] and "**FAILED**" in summ["description"]
    assert "status::failed" in summ["labels"] and "0123abcd" in summ["description"]
    # notes are in event order, each event once
    for issue in fake_gitlab.issues:
        seqs = note_seqs(fake_gitlab, issue["iid"])
        assert seqs == sorted(set(seqs))
    # local copy written as well, same text modulo links
    local = (tmp_path / "report" / "issues" / "CDCTimeZeros.md").read_text()
    strip = lambda s: re.sub(r"\]\([^)]*\)", "]()", re.sub(r"!?\[[^\]]*\]\([^)]*\)(<br>)?", "", s))  # noqa: E731
    assert strip(local).replace("- \n", "") == strip(cdc["description"]).replace("- \n", "")


def test_rerun_with_new_outbox_creates_no_issue(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig,
                                                tmp_path: Path) -> None:
    first = open_reporter(gitlab_cfg, tmp_path / "run1", BUCKET)
    emit_bucket(first, tmp_path / "run1", fail={"BeamSpot": "calibrate"})
    assert first.flush() == 0
    created = issue_posts(fake_gitlab)
    assert created == len(CALIBRATIONS) + 1
    fake_gitlab.issues[0]["state"] = "closed"  # a closed issue is still found (state filter defaults to all)
    rerun = open_reporter(gitlab_cfg, tmp_path / "run2", BUCKET)
    emit_bucket(rerun, tmp_path / "run2")
    assert rerun.flush() == 0
    assert issue_posts(fake_gitlab) == created and len(fake_gitlab.issues) == created
    assert fake_gitlab.issues[0]["state"] == "opened"  # reopened when its calibration ran again
    issues = by_marker(fake_gitlab)
    assert "status::success" in issues["BeamSpot"]["labels"] and "status::failed" not in issues["BeamSpot"]["labels"]
    assert "**SUCCESS**" in issues[None]["description"]


def test_issues_found_across_pages(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig, tmp_path: Path) -> None:
    rep = open_reporter(gitlab_cfg, tmp_path / "a", BUCKET)
    emit_calibration(rep, "SVDTimeOffsets", tmp_path / "plots")
    assert rep.flush() == 0
    assert len(fake_gitlab.issues) == 2  # the calibration + the summary
    for k in range(130):  # newer unrelated issues with the same labels push ours to page 2
        fake_gitlab.issues.append({**fake_gitlab.issues[0], "iid": 100 + k, "id": 5000 + k,
                                   "description": f"noise {k}", "title": f"noise {k}"})
    rep2 = open_reporter(gitlab_cfg, tmp_path / "b", BUCKET)
    emit_calibration(rep2, "SVDTimeOffsets", tmp_path / "plots")
    assert rep2.flush() == 0
    assert issue_posts(fake_gitlab) == 2
    pages = [r.query.get("page", ["1"])[0] for r in fake_gitlab.requests
             if r.method == "GET" and r.path.endswith("/issues")]
    assert "2" in pages


def test_server_down_mid_run_then_flush(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig,
                                        tmp_path: Path) -> None:
    # reference: how many notes a clean delivery posts
    ref_fake = FakeGitLab().start()
    ref_cfg = ReportConfig("gitlab", dataclasses.replace(gitlab_cfg.gitlab, url=ref_fake.url))
    ref = open_reporter(ref_cfg, tmp_path / "ref", BUCKET)
    emit_bucket(ref, tmp_path / "ref", fail={"BeamSpot": "calibrate"})
    ref_notes = {i["title"]: len(ref_fake.notes[i["iid"]]) for i in ref_fake.issues}
    ref_fake.stop()

    rep = open_reporter(gitlab_cfg, tmp_path / "run", BUCKET)
    t0 = time.monotonic()

    def outage(name: str) -> None:
        if name == "SVDTimeOffsets":
            fake_gitlab.stop()

    emit_bucket(rep, tmp_path / "run", fail={"BeamSpot": "calibrate"}, on_event=outage)  # never raises
    elapsed = time.monotonic() - t0
    assert elapsed < 15, f"an outage slowed the run down to {elapsed:.1f} s"
    pending = rep.pending()
    assert pending > 30
    # the local copy is complete despite the outage
    assert "**SUCCESS**" not in (tmp_path / "run" / "report" / "summary.md").read_text()
    assert "**FAILED**" in (tmp_path / "run" / "report" / "summary.md").read_text()
    assert flush(gitlab_cfg, tmp_path / "run", BUCKET) == pending  # still down: nothing lost, nothing raised
    fake_gitlab.start()  # same port
    assert flush(gitlab_cfg, tmp_path / "run", BUCKET) == 0
    assert flush(gitlab_cfg, tmp_path / "run", BUCKET) == 0  # idempotent
    assert len(fake_gitlab.issues) == len(CALIBRATIONS) + 1
    got = {i["title"]: len(fake_gitlab.notes[i["iid"]]) for i in fake_gitlab.issues}
    assert got == ref_notes
    n_events = len(Outbox(tmp_path / "run" / "report").read_events())
    all_seqs = [s for i in fake_gitlab.issues for s in note_seqs(fake_gitlab, i["iid"])]
    assert len(all_seqs) == len(set(all_seqs))  # every event's note exactly once
    for issue in fake_gitlab.issues:
        seqs = note_seqs(fake_gitlab, issue["iid"])
        assert seqs == sorted(set(seqs)) and max(seqs) <= n_events
    assert "**FAILED**" in by_marker(fake_gitlab)[None]["description"]


def test_crash_after_note_before_cursor_is_exactly_once(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig,
                                                        tmp_path: Path) -> None:
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET)
    emit_calibration(rep, "CDCTimeZeros", tmp_path / "plots")
    assert rep.flush() == 0
    iid = by_marker(fake_gitlab)["CDCTimeZeros"]["iid"]
    before = note_seqs(fake_gitlab, iid)
    cpath = tmp_path / "report" / "cursors" / "gitlab.json"
    cur = json.loads(cpath.read_text())
    last = cur["seq"]
    cur.update(seq=last - 1, inflight=last)  # as if killed between the POST of the note and the cursor write
    cpath.write_text(json.dumps(cur))
    assert rep.flush() == 0
    assert note_seqs(fake_gitlab, iid) == before


def test_rate_limit_retry_after_is_honoured(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig,
                                            tmp_path: Path) -> None:
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET)
    fake_gitlab.inject(429, 1, {"Retry-After": "1"})
    rep.emit("bucket_started", requested_iov=[0, 1, -1, -1], settings_commit=None, work_dir=str(tmp_path),
             plan=PLAN)
    reqs = fake_gitlab.requests
    i = next(k for k, r in enumerate(reqs) if r.status == 429)
    assert reqs[i + 1].time - reqs[i].time >= 0.95
    assert rep.pending() == 0 and len(fake_gitlab.issues) == len(CALIBRATIONS) + 1
    # a Retry-After longer than we may sleep: delivery stops, nothing raises, flush later delivers
    fake_gitlab.inject(429, 1, {"Retry-After": "3600"})
    t0 = time.monotonic()
    rep.emit("task_started", "CDCTimeZeros", stage="raw", group=0)
    assert time.monotonic() - t0 < 2
    assert rep.pending() == 1  # the task_started event waits in the outbox
    cursor = json.loads((tmp_path / "report" / "cursors" / "gitlab.json").read_text())
    assert cursor["rate_limited"] and cursor["not_before"] > time.time() + 3000
    rep.emit("task_succeeded", "CDCTimeZeros", duration=1.0)  # within the back-off: not even tried
    assert fake_gitlab.requests[-1].status == 429
    cursor["not_before"] = time.time()  # the wait is over
    (tmp_path / "report" / "cursors" / "gitlab.json").write_text(json.dumps(cursor))
    assert rep.flush() == 0
    assert "status::success" in by_marker(fake_gitlab)["CDCTimeZeros"]["labels"]


def test_deliver_from_driver_only(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig, tmp_path: Path) -> None:
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET, deliver_on_emit=False)
    n_preflight = len(fake_gitlab.requests)
    emit_calibration(rep, "CDCTimeZeros", tmp_path / "plots")
    assert len(fake_gitlab.requests) == n_preflight  # emit() did not talk to GitLab
    assert (tmp_path / "report" / "issues" / "CDCTimeZeros.md").is_file()  # but the local copy is there
    assert rep.pending() > 10
    assert rep.deliver() == 0
    assert "status::success" in by_marker(fake_gitlab)["CDCTimeZeros"]["labels"]


def test_transient_5xx_is_retried(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig, tmp_path: Path) -> None:
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET)
    fake_gitlab.inject(503, 1)
    emit_calibration(rep, "CDCTimeZeros", tmp_path / "plots")
    assert rep.pending() == 0
    assert sum(r.status == 503 for r in fake_gitlab.requests) == 1


def test_token_never_leaks(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig, tmp_path: Path,
                           caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    caplog.set_level(logging.DEBUG)
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET)
    monkeypatch.setattr(http.client.HTTPConnection, "debuglevel", 1)  # would print the headers to stdout
    emit_bucket(rep, tmp_path, fail={"BeamSpot": "calibrate"})
    assert http.client.HTTPConnection.debuglevel == 0
    token = fake_gitlab.token
    # a calibration script that dumps its environment into the log: the tail is redacted on emit
    rep.emit("task_failed", "SVDTimeOffsets", reason="crash", log_tail=f"{TOKEN_ENV}={token}\nSegfault",
             log_path="x.log", duration=1.0, validation_failed=False)
    assert f"{TOKEN_ENV}=[REDACTED]" in by_marker(fake_gitlab)["SVDTimeOffsets"]["description"]
    fake_gitlab.stop()
    rep.emit("bucket_finished", success=False, counts={})
    logging.getLogger("urllib3.connectionpool").debug("header PRIVATE-TOKEN: %s", token)  # would leak: redacted
    assert "[REDACTED]" in caplog.text
    out, err = capfd.readouterr()
    assert token not in caplog.text and token not in out and token not in err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    for issue in fake_gitlab.issues:
        assert token not in json.dumps(issue)
        assert all(token not in n["body"] for n in fake_gitlab.notes[issue["iid"]])
    # the token only travelled in the PRIVATE-TOKEN header
    assert all(token not in r.path and token not in json.dumps(r.query) and token.encode() not in r.body
               for r in fake_gitlab.requests)


def test_signoff_read_back_and_kept(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig, tmp_path: Path) -> None:
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET)
    emit_bucket(rep, tmp_path)
    issues = by_marker(fake_gitlab)
    svd, cdc = issues["SVDTimeOffsets"], issues["CDCTimeZeros"]
    svd["description"] = svd["description"].replace("- [ ] sign-off", "- [x] sign-off")
    svd["description"] = svd["description"].replace("- [ ] payloads reviewed", "- [x] payloads reviewed")
    cdc["labels"].append("signed-off")
    so = read_signoffs(gitlab_cfg, tmp_path, BUCKET)
    assert set(so) == set(CALIBRATIONS)
    assert so["SVDTimeOffsets"].checklist and so["SVDTimeOffsets"].payloads_reviewed and so["SVDTimeOffsets"].signed_off
    assert so["CDCTimeZeros"].label and so["CDCTimeZeros"].signed_off and not so["CDCTimeZeros"].checklist
    assert not so["BeamSpot"].signed_off
    assert so["SVDTimeOffsets"].url == svd["web_url"]
    # later updates of the same results keep the expert's ticks and foreign labels
    rep.emit("validation", "SVDTimeOffsets", passed=True, figures={"extra": 1.0}, plots=[], message="rechecked")
    assert rep.pending() == 0
    assert "| extra | 1 |" in svd["description"] and parse_checklist(svd["description"])["sign-off"]
    rep.emit("task_started", "CDCTimeZeros", stage="raw", group=0)
    assert "signed-off" in cdc["labels"]


def test_preflight_errors_are_clear(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    g = gitlab_cfg.gitlab
    bad_project = ReportConfig("gitlab", dataclasses.replace(g, project="calib/nope"))
    with pytest.raises(ReportConfigError, match="'calib/nope' is missing or the token has no access"):
        open_reporter(bad_project, tmp_path, BUCKET)
    monkeypatch.setenv(TOKEN_ENV, "wrong-token")
    with pytest.raises(ReportConfigError, match="rejected"):
        open_reporter(gitlab_cfg, tmp_path, BUCKET)
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(ReportConfigError, match=f"{TOKEN_ENV}.*not set"):
        open_reporter(gitlab_cfg, tmp_path, BUCKET)
    worker = open_reporter(gitlab_cfg, tmp_path, BUCKET, preflight=False)  # a worker never raises
    worker.emit("task_started", "CDCTimeZeros", stage="raw", group=0)
    assert (tmp_path / "report" / "issues" / "CDCTimeZeros.md").is_file()
    with pytest.raises(ReportConfigError, match="token_env .* or config_section"):
        open_reporter(ReportConfig("gitlab", dataclasses.replace(g, token_env=None)), tmp_path, BUCKET)
    with pytest.raises(ReportConfigError, match="not configured"):
        open_reporter(ReportConfig("gitlab", None), tmp_path, BUCKET)
    monkeypatch.setenv(TOKEN_ENV, fake_gitlab.token)
    fake_gitlab.stop()  # an outage at start is not an error: events wait in the outbox
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET)
    assert "not reachable" in caplog.text
    rep.emit("task_started", "CDCTimeZeros", stage="raw", group=0)
    assert rep.pending() >= 1


def test_python_gitlab_config_section(fake_gitlab: FakeGitLab, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file = tmp_path / "python-gitlab.cfg"
    cfg_file.write_text(f"[global]\ndefault = belle2\n\n[belle2]\nurl = {fake_gitlab.url}\n"
                        f"private_token = {fake_gitlab.token}\n")
    from .conftest import FastGitLabConfig

    g = FastGitLabConfig(url=None, project=fake_gitlab.project_path, config_section="belle2",
                           config_file=str(cfg_file), timeout=2.0)
    rep = open_reporter(ReportConfig("gitlab", g), tmp_path / "w", BUCKET)
    emit_calibration(rep, "CDCTimeZeros", tmp_path / "plots")
    assert rep.pending() == 0 and "CDCTimeZeros" in by_marker(fake_gitlab)
    monkeypatch.setenv("PYTHON_GITLAB_CFG", str(cfg_file))
    g2 = dataclasses.replace(g, config_file=None, config_section="missing")
    with pytest.raises(ReportConfigError, match="'missing'"):
        open_reporter(ReportConfig("gitlab", g2), tmp_path / "w", BUCKET)


def test_concurrent_worker_processes(fake_gitlab: FakeGitLab, gitlab_cfg: ReportConfig, tmp_path: Path) -> None:
    rep = open_reporter(gitlab_cfg, tmp_path, BUCKET)
    rep.emit("bucket_started", requested_iov=[0, 1, -1, -1], settings_commit="abc", work_dir=str(tmp_path),
             plan=PLAN)
    rep = pickle.loads(pickle.dumps(rep))  # what a spawn-based worker would get
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=emit_calibration, args=(rep, n, tmp_path / "plots"))
             for n in ("CDCTimeZeros", "SVDTimeOffsets", "LocalPXDMasks")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert rep.flush() == 0
    assert len(fake_gitlab.issues) == len(CALIBRATIONS) + 1
    issues = by_marker(fake_gitlab)
    for name in ("CDCTimeZeros", "SVDTimeOffsets", "LocalPXDMasks"):
        seqs = note_seqs(fake_gitlab, issues[name]["iid"])
        # started + 10 step changes + validation + ready for review
        assert len(seqs) == 13 and seqs == sorted(set(seqs))
        assert "status::success" in issues[name]["labels"]
