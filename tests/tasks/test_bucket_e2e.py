"""End to end: the whole demo bucket through the luigi DAG, failures, validation failures, kill and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from b2luca.catalogue import discover
from b2luca.conditions import GlobalTag, LocalDatabase, payload_checksum, read_payload
from b2luca.config import load_config
from b2luca.tasks.context import context_for, production_task_name
from b2luca.tasks.driver import run_bucket

from bucket_helpers import ORCHESTRATION, copy_calibrations, make_bucket

pytestmark = pytest.mark.slow


def _prompt_lines(cfg) -> list[str]:
    return (cfg.conditions.directory / cfg.conditions.prompt_global_tag / "database.txt").read_text().splitlines()


def _results(cfg) -> dict[str, dict]:
    out = {}
    for path in (cfg.work_dir / "calibrations").glob("*/result.json"):
        out[path.parent.name] = json.loads(path.read_text())
    return out


def test_demo_bucket_end_to_end(tmp_path):
    config = make_bucket(tmp_path)
    cfg = load_config(config)
    lines: list[str] = []
    outcome = run_bucket(cfg, workers=2, echo=lines.append)
    text = "\n".join(lines)
    assert outcome.exit_code == 0, text
    assert "bucket demo: SUCCESS" in text and any(line.startswith("task ") for line in lines)  # table + verdict

    ctx = context_for(str(config))
    names = ctx.plan.order
    results = _results(cfg)
    assert sorted(results) == sorted(names)
    assert all(r["status"] == "success" for r in results.values())
    # Every calibration's payloads and the local calibrations' payloads are in the prompt global tag.
    prompt = GlobalTag.open(cfg.conditions.directory, cfg.conditions.prompt_global_tag)
    present = {e.name for e in prompt.db.entries()}
    expected = {p for n in names for p in ctx.catalogue[n].settings.produced_payloads}
    expected |= {p for tags in cfg.local_calibrations.values() for ps in tags.values() for p in ps}
    assert expected <= present, expected - present
    assert all(str(e.iov) == str(cfg.prompt_iov) for e in prompt.db.entries())
    # One report per calibration plus the summary, and one archive per group.
    issues = cfg.work_dir / "report" / "issues"
    assert {p.stem for p in issues.glob("*.md")} >= set(names)
    summary = (cfg.work_dir / "report" / "summary.md").read_text()
    assert all(name in summary for name in names)
    archived = {json.loads(p.read_text())["group"]: Path(json.loads(p.read_text())["location"])
                for p in (cfg.work_dir / "archive").glob("*.json")}
    groups = {"local", "cdst_production"} | {f"raw-{i}" for i in range(len(ctx.plan.stage("raw").groups))} | {
        f"cdst-{i}" for i in range(len(ctx.plan.stage("cdst").groups))}
    assert set(archived) == groups
    for group, location in archived.items():
        assert location.is_dir() and location.is_relative_to(cfg.archive.directory / "demo"), group
        assert not any(p.suffix == ".root" and "raw_" in p.name for p in location.rglob("*"))
    raw0 = archived["raw-0"]
    assert any(raw0.rglob("caf_config.json")) and any(raw0.rglob("calibrate.log"))
    assert str(archived["raw-0"]) in summary  # the summary records the archive location
    # caf_config.json speaks basf2's shape.
    caf = json.loads((cfg.work_dir / "calibrations" / names[0] / "caf_config.json").read_text())
    assert set(caf) >= {"caf_script", "database_chain", "backend_args", "requested_iov", "expert_config",
                        "testing_payloads"}
    assert caf["requested_iov"] == [26, 1, 26, 8]
    inputs = json.loads((cfg.work_dir / "calibrations" / names[0] / "input_data.json").read_text())
    assert all(isinstance(e[0], str) and len(e[1]) == 2 for entries in inputs.values() for e in entries)

    # A rerun finds everything complete: nothing runs, no new payload revision.
    before = _prompt_lines(cfg)
    again = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert again.exit_code == 0
    assert {r.state for r in again.rows} == {"done before"}
    assert _prompt_lines(cfg) == before


def test_rerun_of_a_raw_calibration_redoes_its_dependents_and_copies_unchanged_branches(simulated_bucket, tmp_path):
    """``--rerun`` on the session bucket with the calibrations it needs, not on the whole demo (whose alignment
    and cdst stage would run a second time: issue 15's CI time)."""
    config = simulated_bucket.config(tmp_path, select=["CDCTimeZeros", "SVDTimeOffsets", "ECLCrystalEnergy"])
    cfg = load_config(config)
    ctx = context_for(str(config))
    first = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert first.exit_code == 0, [(r.name, r.state) for r in first.rows]
    before = _prompt_lines(cfg)
    # --rerun of a raw calibration redoes it, the cdst calibrations and cDST production.  Its result is the
    # same content (no new revision), so production copies the hit and track branches; only the ECL branches,
    # whose constants the first run's cdst stage refined, are recomputed.
    rerun = run_bucket(cfg, workers=2, rerun=["SVDTimeOffsets"], echo=lambda _: None)
    assert rerun.exit_code == 0
    states = {r.name: r.state for r in rerun.rows}
    assert states["SVDTimeOffsets"] == "success" and states["CDCTimeZeros"] == "done before"
    assert all(states[n] == "success" for n in ctx.plan.stage("cdst").calibrations)
    productions = [json.loads(p.read_text()) for p in (cfg.work_dir / "cdst_production").glob("r*.json")]
    # one production task per group of runs (sized by data volume); every run of a group has its marker
    assert productions and all(states[production_task_name(p["runs"][0], p["runs"][-1])] == "success"
                               for p in productions)
    assert all(p["computed"]["hits"] == 0 and p["computed"]["tracks"] == 0 for p in productions), productions
    assert any(p["computed"]["ecl"] > 0 for p in productions)
    raw_payloads = {f"dbstore/{p}" for n in ctx.plan.stage("raw").calibrations
                    for p in ctx.catalogue[n].settings.produced_payloads}
    assert [l for l in _prompt_lines(cfg) if l.split()[0] in raw_payloads] == [
        l for l in before if l.split()[0] in raw_payloads]
    assert list((cfg.work_dir / "calibrations" / "SVDTimeOffsets" / "history").glob("result-*.json"))


def _break_calibration(calibrations: Path, script: str, body: str) -> None:
    path = calibrations / script
    path.write_text(path.read_text() + "\n\n" + textwrap.dedent(body))


def _run_with_crash(simulated_bucket, tmp_path, script: str, message: str, skip: tuple[str, ...] = ()):
    """Run the session bucket with ``script``'s calibrate() raising ``message`` (calibrations ``skip`` left out):
    (config, context, outcome)."""
    calibrations = copy_calibrations(tmp_path)
    _break_calibration(calibrations, script, f'''
        def calibrate(job):
            raise RuntimeError("{message}")
        ''')
    select = [n for n in discover(calibrations).names if n not in skip] if skip else None
    config = simulated_bucket.config(tmp_path, calibrations=calibrations, select=select)
    cfg = load_config(config)
    return cfg, context_for(str(config)), run_bucket(cfg, workers=2, echo=lambda _: None)


def test_failing_calibration_stops_only_its_dependents(simulated_bucket, tmp_path):
    cfg, ctx, outcome = _run_with_crash(simulated_bucket, tmp_path, "cdc_time_zeros.py",
                                        "simulated crash in the CDC t0 fit")
    assert outcome.exit_code == 1
    states = {r.name: r.state for r in outcome.rows}
    assert states["CDCTimeZeros"] == "failed"
    for dependent in ctx.plan.dependents("CDCTimeZeros"):
        assert states[dependent].startswith("not run"), (dependent, states[dependent])
    independent = [n for n in ctx.plan.stage("raw").groups[0] if n != "CDCTimeZeros"]
    assert independent and all(states[n] == "success" for n in independent)
    assert all(states[n].startswith("not run") for n in ctx.plan.stage("cdst").calibrations)
    report = (cfg.work_dir / "report" / "issues" / "CDCTimeZeros.md").read_text()
    assert "simulated crash in the CDC t0 fit" in report and "<details>" in report
    assert not (cfg.work_dir / "calibrations" / "CDCTimeZeros" / "result.json").exists()
    prompt_names = {line.split()[0] for line in _prompt_lines(cfg)}
    assert "dbstore/CDCTimeZeros" not in prompt_names


def test_a_crash_of_a_calibration_production_does_not_read_leaves_production_and_cdst_running(simulated_bucket, tmp_path):
    """cDST production waits only for the calibrations whose payloads reconstruction reads: the GAN's crash
    stops nothing else, but the bucket fails, the GAN's group is not archived and the tag stays OPEN."""
    cfg, ctx, outcome = _run_with_crash(simulated_bucket, tmp_path, "pxd_background_gan.py",
                                        "simulated crash in the GAN training",
                                        skip=("ECLMuPiCNN",))  # small events: no radmumu_calib
    assert outcome.exit_code == 1
    states = {r.name: r.state for r in outcome.rows}
    assert states["PXDBackgroundGAN"] == "failed"
    assert all(states[n] == "success" for n in ctx.plan.order if n != "PXDBackgroundGAN"), states
    assert all(states[production_task_name(g[0], g[-1])] == "success" for g in ctx.production_groups)
    assert states["ArchiveLogs:raw-0"].startswith("not run") and states["ArchiveLogs:raw-1"] == "success"
    assert GlobalTag.open(cfg.conditions.directory, cfg.conditions.prompt_global_tag).state.value == "OPEN"


def test_validation_failure_is_reported_and_not_published(simulated_bucket, tmp_path):
    calibrations = copy_calibrations(tmp_path)
    # A bug that shifts every SVD offset by 10 ns: the validation against the truth must catch it.
    _break_calibration(calibrations, "svd_time_offsets.py", '''
        _original_calibrate = calibrate

        def calibrate(job):
            _original_calibrate(job)
            entry = job.output_db.entries()[-1]
            data = job.output_db.read(entry)
            data["offset"] = data["offset"] + 10.0
            job.output_db.store(entry.name, data, entry.iov)
        ''')
    config = simulated_bucket.config(tmp_path, calibrations=calibrations)
    cfg = load_config(config)
    outcome = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert outcome.exit_code == 1
    states = {r.name: r.state for r in outcome.rows}
    assert states["SVDTimeOffsets"] == "validation-failed"
    result = json.loads((cfg.work_dir / "calibrations" / "SVDTimeOffsets" / "result.json").read_text())
    assert result["status"] == "validation-failed" and result["verdict"]["passed"] is False
    assert "dbstore/SVDTimeOffsets" not in {line.split()[0] for line in _prompt_lines(cfg)}
    report = (cfg.work_dir / "report" / "issues" / "SVDTimeOffsets.md").read_text()
    assert "validation-failed" in report
    # The other calibrations were not held back by an unrelated validation failure.
    assert states["CDCTimeZeros"] == "success"


def test_killed_driver_resumes_without_redoing_finished_work(simulated_bucket, tmp_path):
    config = simulated_bucket.config(tmp_path, select=list(ORCHESTRATION))  # every stage, no minute-long training
    cfg = load_config(config)
    driver = subprocess.Popen([sys.executable, "-m", "b2luca.cli", "run", str(config), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not _results(cfg):
        time.sleep(0.2)
    assert _results(cfg), "no calibration finished before the deadline"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(1.0)  # let an orphaned worker, if any, finish its task (the per-calibration lock covers the rest)
    finished = {name: r["start"] for name, r in _results(cfg).items()}
    assert not (cfg.work_dir / "status.json").exists()  # the first run never got to its end

    outcome = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert outcome.exit_code == 0, [(r.name, r.state) for r in outcome.rows]
    after = _results(cfg)
    for name, start in finished.items():
        assert after[name]["start"] == start, f"{name} ran twice"
    states = {r.name: r.state for r in outcome.rows}
    assert all(states[name] == "done before" for name in finished)
    # No payload was stored twice: all revisions of a payload hold different content (PXDMasks legitimately
    # has two: the local copy from the staging tag and the raw-stage PXD calibration's).
    prompt = LocalDatabase(cfg.conditions.directory / cfg.conditions.prompt_global_tag)
    by_name: dict[str, list[str]] = {}
    for entry in prompt.entries():
        assert entry.path.is_file(), entry
        by_name.setdefault(entry.name, []).append(payload_checksum(read_payload(entry.path)))
    assert all(len(sums) == len(set(sums)) for sums in by_name.values()), by_name
    assert len(by_name["PXDMasks"]) == 2 and all(len(v) == 1 for k, v in by_name.items() if k != "PXDMasks")
