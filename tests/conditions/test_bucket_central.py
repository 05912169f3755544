"""End to end: the demo bucket with ``conditions.backend: central`` against the conditions-DB test server,
reporting to the GitLab test server (python-gitlab over HTTP); sign-off, publish; update/veto outcomes."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from b2luca.cli import main
from b2luca.conditions import GlobalTag, LocalDatabase
from b2luca.conditions.backend import file_md5
from b2luca.config import load_config
from b2luca.tasks.context import context_for
from b2luca.tasks.driver import run_bucket

from bucket_helpers import EXPERTS, REPORTING_EVENTS, fast_report_backoff, make_bucket
from report.fake_gitlab import FakeGitLab

from runners.conftest import standin_path

from .fake_conddb import FakeCondDB

REPO = str(Path(__file__).resolve().parents[2])

pytestmark = pytest.mark.slow

GITLAB_TOKEN_ENV = "B2LUCA_E2E_GITLAB_TOKEN"
CONDDB_TOKEN_ENV = "B2LUCA_E2E_CONDDB_TOKEN"
EVENTS = REPORTING_EVENTS


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    fast_report_backoff(monkeypatch)


@pytest.fixture()
def servers(monkeypatch):
    gitlab = FakeGitLab(users={name: 100 + i for i, name in enumerate(EXPERTS)}).start()
    conddb = FakeCondDB().start()
    monkeypatch.setenv(GITLAB_TOKEN_ENV, gitlab.token)
    monkeypatch.setenv(CONDDB_TOKEN_ENV, conddb.token)
    yield gitlab, conddb
    gitlab.stop()
    conddb.stop()


def _notes(gitlab: FakeGitLab) -> int:
    return sum(len(notes) for notes in gitlab.notes.values())


def _issue(gitlab: FakeGitLab, name: str) -> dict:
    return next(i for i in gitlab.issues if i["title"] == f"[demo] {name}")


def test_demo_bucket_central_upload_testing_signoff_publish(tmp_path, servers, capsys, monkeypatch):
    gitlab, conddb = servers
    config = make_bucket(tmp_path, events=EVENTS, changes={
        "conditions.backend": "central",
        "conditions.central": {"url": conddb.url, "token_env": CONDDB_TOKEN_ENV, "timeout": 5.0, "retries": 1},
        "runner.basf2": {"setup": "true"},
        "report.transport": "gitlab",
        "report.gitlab": {"url": gitlab.url, "project": gitlab.project_path, "token_env": GITLAB_TOKEN_ENV,
                          "timeout": 2.0}})
    cfg = load_config(config)
    # Local calibrations are copied by the service (`b2conditionsdb iovs copy`): the stand-in's "service" is the
    # bucket's conditions folder, so the copies also land in the local working copy the database chain reads.
    monkeypatch.setenv("PATH", standin_path())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("B2CONDB_STANDIN_DIR", str(cfg.conditions.directory))
    GlobalTag.create(cfg.conditions.directory, cfg.conditions.prompt_global_tag)  # the stand-in service's tag
    outcome = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert outcome.exit_code == 0, [(r.name, r.state) for r in outcome.rows]
    ctx = context_for(str(config))
    calibrations = sorted(ctx.catalogue.calibrations)

    # Every validated payload that passed the update rule is uploaded once: the central tag holds exactly the
    # revisions the calibrations put into the bucket's local prompt tag.
    staging = LocalDatabase(cfg.conditions.directory / cfg.conditions.prompt_global_tag)
    uploaded = [p for n in calibrations for p in json.loads(ctx.result_path(n).read_text())["payloads"]]
    entries = {(e.name, e.revision): e for e in staging.entries()}
    expected = Counter((p["name"], tuple(entries[p["name"], p["revision"]].iov.as_list()),
                        file_md5(entries[p["name"], p["revision"]].path)) for p in uploaded)
    produced = {p for n in calibrations for p in ctx.catalogue[n].settings.produced_payloads}
    assert len(expected) == len(produced), expected  # the demo's constants all differ significantly from the
    # nominal ones; the two local calibrations were copied by the service, one `iovs copy` each:
    copies = [json.loads(line) for line in (cfg.conditions.directory / "commands.log").read_text().splitlines()]
    assert sorted(c[-2] for c in copies) == ["staging_pxd_demo", "staging_svd_demo"], copies
    assert Counter(conddb.tag_iovs("prompt_demo")) == expected
    assert len(conddb.payloads) == len(expected)
    assert conddb.tags["prompt_demo"]["globalTagStatus"] == "TESTING"

    # Review without noise: one note per calibration issue (finished), two on the summary (finished, TESTING).
    notes = _notes(gitlab)
    print(f"\nnotes after the demo bucket: {notes} for {len(gitlab.issues)} issues")
    summary = next(i for i in gitlab.issues if i["title"] == "[demo] bucket summary")
    assert len(gitlab.notes[summary["iid"]]) == 2
    for name in calibrations:
        bodies = [n["body"] for n in gitlab.notes[_issue(gitlab, name)["iid"]]]
        assert len(bodies) == 1 and "finished. Validation **passed**" in bodies[0], (name, bodies)
        assert "## Upload" in _issue(gitlab, name)["description"]
    assert notes == len(gitlab.issues) + 1  # 9 issues: 6 calibrations + 2 local copies (1 note each) + summary (2)

    # A rerun that changes nothing uploads nothing and posts nothing.
    writes, notes = len(conddb.writes()), _notes(gitlab)
    again = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert again.exit_code == 0 and len(conddb.writes()) == writes and _notes(gitlab) == notes

    # --rerun of a calibration reopens the tag first; same result: nothing new uploaded, TESTING again.
    rerun = run_bucket(cfg, workers=2, rerun=["BeamSpot"], echo=lambda _: None)
    assert rerun.exit_code == 0
    assert conddb.tags["prompt_demo"]["globalTagStatus"] == "TESTING"
    assert Counter(conddb.tag_iovs("prompt_demo")) == expected and len(conddb.payloads) == len(expected)
    beam = [n["body"] for n in gitlab.notes[_issue(gitlab, "BeamSpot")["iid"]]]
    assert any("**reopened** (was TESTING)" in b for b in beam)

    # Sign-off: every issue but one ticked (one of them by label); publish refuses and names the missing one.
    for name in calibrations[1:]:
        issue = _issue(gitlab, name)
        if name == calibrations[1]:
            issue["labels"].append("signed-off")
        else:
            issue["description"] = issue["description"].replace("- [ ] sign-off", "- [x] sign-off")
    capsys.readouterr()
    assert main(["publish", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"not signed off: {calibrations[0]} " in err and "TESTING" == conddb.tags["prompt_demo"]["globalTagStatus"]
    assert main(["status", str(config)]) == 0
    out = capsys.readouterr().out
    assert "prompt global tag prompt_demo (central): TESTING" in out
    assert f"{calibrations[0]}: not signed off" in out and f"{calibrations[1]}: signed off (label)" in out

    first = _issue(gitlab, calibrations[0])
    first["description"] = first["description"].replace("- [ ] sign-off", "- [x] sign-off")
    assert main(["publish", str(config)]) == 0
    assert "prompt global tag prompt_demo (central): PUBLISHED" in capsys.readouterr().out
    assert conddb.tags["prompt_demo"]["globalTagStatus"] == "PUBLISHED"
    for name in calibrations:
        issue = _issue(gitlab, name)
        assert issue["state"] == "closed", name
        assert "**PUBLISHED**" in gitlab.notes[issue["iid"]][-1]["body"]
    # A published tag refuses a change with a clear error (exit code 1).
    assert main(["run", str(config), "--rerun", "BeamSpot"]) == 1
    assert "PUBLISHED: it cannot be reopened" in capsys.readouterr().err
    for root in (cfg.work_dir, cfg.archive.directory):
        for path in root.rglob("*"):
            if path.is_file():
                assert conddb.token.encode() not in path.read_bytes(), path


def test_update_veto_outcomes_in_the_bucket(tmp_path):
    """SVDTimeOffsets vetoed (max_change), CDCTimeZeros below threshold: nothing of either in the prompt tag."""
    config = make_bucket(tmp_path, events=EVENTS, select=["SVDTimeOffsets", "CDCTimeZeros"], changes={
        "calibrations.upload": {"default": {"min_significance": 3}, "SVDTimeOffsets": {"max_change": 0.001},
                                "CDCTimeZeros": {"min_significance": 1e9}}})
    cfg = load_config(config)
    assert main(["run", str(config), "--only", "SVDTimeOffsets"]) == 1  # vetoed: exit code 1
    assert main(["run", str(config), "--only", "CDCTimeZeros"]) == 0  # below threshold: not uploaded, fine
    results = {n: (cfg.work_dir / "calibrations" / n / "result.json").read_text() for n in ("SVDTimeOffsets",
                                                                                             "CDCTimeZeros")}
    assert '"status": "vetoed"' in results["SVDTimeOffsets"] and '"status": "success"' in results["CDCTimeZeros"]
    prompt = GlobalTag.open(cfg.conditions.directory, cfg.conditions.prompt_global_tag)
    assert not {"SVDTimeOffsets", "CDCTimeZeros"} & set(prompt.db.names())
    assert prompt.state.value == "OPEN"  # not every calibration passed
    issue = (cfg.work_dir / "report" / "issues" / "SVDTimeOffsets.md").read_text()
    assert "**Status:** `vetoed`" in issue and "**Vetoed:** SVDTimeOffsets: max |change|" in issue
    assert "| SVDTimeOffsets | **vetoed** |" in issue and "veto when max |change| > 0.001" in issue
    cdc = (cfg.work_dir / "report" / "issues" / "CDCTimeZeros.md").read_text()
    assert "| CDCTimeZeros | **not uploaded** |" in cdc and "nothing to gain" in cdc
