"""LSF and HTCondor through b2luigi's process classes, against command stand-ins that really run the job."""

from __future__ import annotations

import json

import pytest

from b2luca.config import load_config
from b2luca.tasks.batch import secret_names
from b2luca.tasks.context import context_for
from b2luca.tasks.driver import run_bucket
from b2luca.tasks.ledger import ledger_path, read_ledger

from fakebatch import SECRET

pytestmark = pytest.mark.slow

RESOURCES = {"per_task": {"SVDTimeOffsets": {"cpus": 2, "memory_mb": 1234, "walltime_min": 7, "queue": "short"}}}


def _calls(state, tool):
    return [c for c in map(json.loads, (state / "calls.jsonl").read_text().splitlines()) if c["tool"] == tool]


@pytest.mark.parametrize("system", ["lsf", "htcondor"])
def test_calibration_runs_as_a_job(system, bucket_copy, fake_batch, monkeypatch):
    monkeypatch.setenv("GITLAB_TOKEN", SECRET)
    config = bucket_copy(system, {"batch.system": system, "batch.resources": RESOURCES,
                                  "batch.status_cache_ttl": 0.5})
    context_for.cache_clear()
    cfg = load_config(config)
    lines: list[str] = []
    outcome = run_bucket(cfg, workers=2, only="SVDTimeOffsets", echo=lines.append)
    assert outcome.exit_code == 0, "\n".join(lines)
    assert json.loads(cfg.work_dir.joinpath("calibrations/SVDTimeOffsets/result.json").read_text())["status"] == "success"

    jobs = read_ledger(ledger_path(cfg.work_dir))
    assert [e["name"] for e in jobs.values()] == ["SVDTimeOffsets"]  # setup and local copies ran in the driver
    entry = next(iter(jobs.values()))
    assert entry["system"] == system and entry["state"] == "done" and len(entry["attempts"]) == 1
    job_id = entry["attempts"][0]["job_ids"][0]
    assert (fake_batch / "jobs" / job_id / "rc").read_text().strip() == "0"  # the stand-in really ran it
    assert "batch jobs (" in "\n".join(lines) and job_id in "\n".join(lines)

    if system == "lsf":
        (bsub,) = _calls(fake_batch, "bsub")
        args = bsub["args"]
        assert args[args.index("-q") + 1] == "short" and args[args.index("-n") + 1] == "2"
        assert args[args.index("-J") + 1] == "b2luca-demo-SVDTimeOffsets"
        assert not secret_names(cfg, bsub["env"]) & {"GITLAB_TOKEN"}  # bsub -env all: scrubbed before submission
        assert _calls(fake_batch, "bjobs")
    else:
        (submit,) = _calls(fake_batch, "condor_submit")
        submitted = json.loads((fake_batch / "jobs" / job_id / "submit.json").read_text())
        assert submitted["getenv"] == "false" and submitted["request_memory"] == "1234"
        assert submitted["request_cpus"] == "2" and submitted["+maxruntime"] == "420"
        assert submitted["+jobflavour"] == '"short"'
        assert _calls(fake_batch, "condor_q")
    # no job file, log or submission environment carries the token
    for path in (cfg.work_dir / "batch").rglob("*"):
        assert not path.is_file() or SECRET not in path.read_text(errors="replace"), path
    for call in _calls(fake_batch, "bsub") + _calls(fake_batch, "condor_submit"):  # what a job can inherit
        assert SECRET not in json.dumps(call), call["tool"]
    for path in (fake_batch / "jobs").rglob("*"):
        assert not path.is_file() or SECRET not in path.read_text(errors="replace"), path


def test_refused_submission_fails_the_task_not_the_driver(bucket_copy, fake_batch, monkeypatch):
    monkeypatch.setenv("FAKEBATCH_REFUSE", "1")
    config = bucket_copy("refused", {"batch.system": "lsf"})
    context_for.cache_clear()
    lines: list[str] = []
    outcome = run_bucket(load_config(config), workers=2, only="SVDTimeOffsets", echo=lines.append)
    assert outcome.exit_code == 1
    assert [r.state for r in outcome.rows if r.name == "SVDTimeOffsets"] == ["failed"]
    assert "SVDTimeOffsets: failed" in "\n".join(lines)
