"""The demo bucket with ``runner.type: basf2`` and the stand-in basf2 tools, end to end: killed while a CAF runs its
algorithms and rerun, the CAF resumes from caf_state.db, no payload is stored twice, every issue is assigned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from b2luca.conditions import LocalDatabase, payload_checksum, read_payload
from b2luca.config import load_config
from b2luca.report import local_issue_path
from b2luca.runners import read_caf_state
from b2luca.tasks.driver import run_bucket

from bucket_helpers import make_bucket

pytestmark = pytest.mark.slow

SMALL_EVENTS = {"cosmic_calib": 150, "mumu_tight_or_highm_calib": 600, "hadron_calib": 300,
                "bhabha_all_calib": 300, "random_calib": 50}


def _stalled(cfg) -> str | None:
    """A calibration whose CAF is in its algorithm step, if any."""
    for db in (cfg.work_dir / "calibrations").glob("*/calibration_results/caf_state.db"):
        try:
            states = read_caf_state(db.parent.parent)
        except Exception:  # being written
            continue
        if any(s.state == "running_algorithms" for s in states):
            return db.parent.parent.name
    return None


def test_demo_with_basf2_runner_killed_and_resumed(tmp_path, basf2_standins, monkeypatch):
    config = make_bucket(tmp_path, events=SMALL_EVENTS, changes={
        "runner": {"type": "basf2", "backend": "Local",
                   "basf2": {"setup": "echo basf2 setup for the demo", "heartbeat": 1,
                             "backend_args": {"CDCTimeZeros": {"max_processes": 2}}}}})
    cfg = load_config(config)
    env = {**os.environ, "B2CAF_STANDIN_STALL": "120"}
    driver = subprocess.Popen([sys.executable, "-m", "b2luca.cli", "run", str(config), "--workers", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and driver.poll() is None and not killed:
        killed = _stalled(cfg)
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert killed, "no CAF reached its algorithm step before the deadline"
    time.sleep(1.0)
    work = cfg.work_dir / "calibrations" / killed
    assert not (work / "result.json").exists()
    caf_config = json.loads((work / "caf_config.json").read_text())
    if killed == "CDCTimeZeros":
        assert caf_config["backend_args"] == {"max_processes": 2}

    outcome = run_bucket(cfg, workers=2, echo=lambda _: None)
    assert outcome.exit_code == 0, [(r.name, r.state) for r in outcome.rows]
    log = (work / "calibrate.log").read_text()
    assert "basf2 setup for the demo" in log and "--permissive" in log
    assert f"resuming {killed} from checkpoint collector_completed (state was running_algorithms)" in log
    assert (work / "calibration_results" / killed / "collector_runs.log").read_text().count("collector ran") == 1
    assert [s.state for s in read_caf_state(work)] == ["completed"]

    results = {p.parent.name: json.loads(p.read_text()) for p in (cfg.work_dir / "calibrations").glob("*/result.json")}
    assert results and all(r["status"] == "success" for r in results.values()), results
    # validations ran through b2val-prompt-run: their plots are in the verdict
    assert any(r["verdict"] and r["verdict"]["plots"] for r in results.values())
    # no payload stored twice (PXDMasks: the local copy and the PXD calibration's)
    prompt = LocalDatabase(cfg.conditions.directory / cfg.conditions.prompt_global_tag)
    by_name: dict[str, list[str]] = {}
    for entry in prompt.entries():
        by_name.setdefault(entry.name, []).append(payload_checksum(read_payload(entry.path)))
    assert all(len(sums) == len(set(sums)) for sums in by_name.values()), by_name
    assert len(by_name["PXDMasks"]) == 2 and all(len(v) == 1 for k, v in by_name.items() if k != "PXDMasks")
    # every issue (local copies included) is assigned, and the CAF state is in the calibration's issue
    for name in [*results, "LocalPXD:staging_pxd_demo", "LocalSVD:staging_svd_demo"]:
        text = local_issue_path(cfg.work_dir, name).read_text()
        assert "**Expert:** @" in text, name
    assert f"CAF state: {killed}: completed" in local_issue_path(cfg.work_dir, killed).read_text()
