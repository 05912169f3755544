"""The basf2 runner against stand-ins of b2caf-prompt-run / b2val-prompt-run that follow basf2's command-line
contract: command line and --permissive, the basf2 setup through bash, caf_state.db, failure, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from dataclasses import replace

import pytest

from b2luca.conditions import LocalDatabase
from b2luca.config import Basf2RunnerConfig, Resources, RunnerConfig
from b2luca.iov import ExpRun
from b2luca.runners import Basf2Runner, log_tail, output_database, read_caf_state

from .test_native import _setup

VALIDATION = '''
"""Plots the calibrated number."""
from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="CountFiles", description=__doc__, download_files=["calibrate.log"],
                              expert_config={"colour": "red"})


def run_validation(job_path, input_data_path, requested_iov, expert_config):
    import json
    from pathlib import Path
    config = json.loads(expert_config)
    assert isinstance(requested_iov, str) and json.loads(requested_iov) == [26, 1, 26, 8]
    Path("count.png").write_bytes(b"png " + config["colour"].encode())
    assert Path("../download_files/calibrate.log").is_file()
'''


def _runner(setup: str = "", **kwargs) -> Basf2Runner:
    cfg = RunnerConfig(type="basf2", basf2=Basf2RunnerConfig(setup=setup, heartbeat=1, **kwargs))
    return Basf2Runner(cfg, secret_names=("MY_RUNDB_KEY",))


def _calibrate(runner, work):
    return runner.calibrate(work / "caf_config.json", work / "input_data.json", work, work / "calibrate.log")


def test_runs_b2caf_prompt_run_in_the_basf2_setup(tmp_path, basf2_standins, monkeypatch):
    monkeypatch.setenv("GITLAB_PRIVATE_TOKEN", "glpat-secret")
    monkeypatch.setenv("MY_RUNDB_KEY", "rundb-secret")
    work = _setup(tmp_path, {"scale": 2.0, "fail": False})
    result = _calibrate(_runner(setup="echo basf2 release set up; export BELLE2_RELEASE=release-09-00-00"), work)
    assert result.ok, log_tail(result.log_path)
    cmd = list(result.command)
    assert cmd[:2] == ["bash", "-c"] and cmd[4:] == [
        "b2caf-prompt-run", "Local", str(work / "caf_config.json"), str(work / "input_data.json"),
        "--heartbeat", "1", "--permissive"]  # full script path and testing_payloads need --permissive
    log = result.log_path.read_text()
    assert "basf2 release set up" in log
    assert "glpat-secret" not in log and "rundb-secret" not in log and "env secrets visible: []" in log
    out = LocalDatabase(output_database(work, "CountFiles"))
    assert out.read("CountFiles", ExpRun(26, 3))["n"][0] == 6.0
    assert [str(s) for s in result.caf_state] == ["CountFiles: completed (checkpoint completed, iteration 0)"]


def test_setup_failure_stops_before_the_tool(tmp_path, basf2_standins):
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    result = _calibrate(_runner(setup="source /no/such/b2setup"), work)
    assert not result.ok
    assert not (work / "calibration_results").exists()


def test_standin_refuses_full_path_without_permissive(tmp_path, basf2_standins):
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    done = subprocess.run(["b2caf-prompt-run", "Local", "caf_config.json", "input_data.json"], cwd=work,
                          capture_output=True, text=True)
    assert done.returncode == 1 and "--permissive" in done.stdout


def test_caf_failure_is_a_failed_run_with_the_state(tmp_path, basf2_standins, monkeypatch):
    monkeypatch.setenv("B2CAF_STANDIN_FAIL", "algorithm")
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    result = _calibrate(_runner(), work)
    assert not result.ok and result.returncode == 1
    assert [(s.name, s.state, s.checkpoint) for s in result.caf_state] == [
        ("CountFiles", "failed", "collector_completed")]
    assert "algorithm failed" in log_tail(result.log_path)
    assert not output_database(work, "CountFiles").exists()


def test_killed_caf_resumes_without_duplicate_payloads(tmp_path, basf2_standins, monkeypatch):
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    runner = _runner()
    argv = runner.wrap(["b2caf-prompt-run", "Local", "caf_config.json", "input_data.json", "--permissive",
                        "--heartbeat", "1"])
    env = {**os.environ, "B2CAF_STANDIN_STALL": "60"}
    with open(work / "first.log", "w") as log:
        process = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:  # the stand-in creates the database file, then its table: a read in between finds no table yet
                states = read_caf_state(work)
            except sqlite3.Error:
                states = []
            if states and states[0].state == "running_algorithms":
                break
            time.sleep(0.2)
        else:
            process.kill()
            pytest.fail("the stand-in never reached running_algorithms: " + (work / "first.log").read_text())
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not output_database(work, "CountFiles").exists()

    result = _calibrate(runner, work)
    assert result.ok, log_tail(result.log_path)
    assert "--overwrite-working-dir" not in result.command
    log = result.log_path.read_text()
    assert "resuming CountFiles from checkpoint collector_completed (state was running_algorithms)" in log
    collector_runs = (work / "calibration_results" / "CountFiles" / "collector_runs.log").read_text()
    assert collector_runs.count("collector ran") == 1  # the collector was not run again
    lines = (output_database(work, "CountFiles") / "database.txt").read_text().split("\n")
    assert [line for line in lines if line.strip()] == ["dbstore/CountFiles 1 26,1,-1,-1"]
    assert [s.state for s in read_caf_state(work)] == ["completed"]

    # a finished CAF run again on purpose starts afresh (the collector runs again)
    shutil.rmtree(output_database(work, "CountFiles"))
    again = _calibrate(runner, work)
    assert again.ok and "--overwrite-working-dir" in again.command
    log = again.log_path.read_text()
    assert log.count("CountFiles -> running_collector") == 1 and log.count("resuming") == 1


def test_backend_args_from_resources_and_yaml():
    runner = _runner(backend_args={"CountFiles": {"max_processes": 8, "queue": "s"}})
    assert runner.backend_args("CountFiles", Resources(cpus=2)) == {"max_processes": 8, "queue": "s"}
    assert runner.backend_args("Other", Resources(cpus=2)) == {"max_processes": 2}
    lsf = Basf2Runner(replace(runner.cfg, backend="LSF"))
    assert lsf.backend_args("Other", Resources(queue="l")) == {"queue": "l"}


def test_validation_through_b2val_prompt_run(tmp_path, basf2_standins):
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    runner = _runner()
    assert _calibrate(runner, work).ok
    script = tmp_path / "calibrations" / "validations" / "count_files.py"
    script.parent.mkdir()
    script.write_text(VALIDATION)
    out = work / "validation"
    out.mkdir()
    verdict_path = work / "verdict.json"
    result = runner.validate(script, work, work / "input_data.json", verdict_path, out, work / "validate.log", None)
    assert result.ok, log_tail(result.log_path)
    config = json.loads((out / "validation_config.json").read_text())
    assert set(config) >= {"validation_script", "job_path", "input_data_path", "requested_iov", "expert_config",
                           "download_files"}
    verdict = json.loads(verdict_path.read_text())
    assert verdict["passed"] is True
    assert verdict["plots"] == [str(out / "validation_results" / "validations" / "count.png")]
    assert (out / "validation_results" / "download_files" / "calibrate.log").is_file()


def test_failed_validation_leaves_no_verdict(tmp_path, basf2_standins):
    work = _setup(tmp_path, {"scale": 1.0, "fail": False})
    runner = _runner()
    assert _calibrate(runner, work).ok
    script = tmp_path / "calibrations" / "validations" / "count_files.py"
    script.parent.mkdir()
    script.write_text(VALIDATION.replace('"red"', '1'))  # .encode() on an int fails
    out = work / "validation"
    out.mkdir()
    result = _runner().validate(script, work, work / "input_data.json", work / "verdict.json", out,
                                work / "validate.log", None)
    assert not result.ok and not (work / "verdict.json").exists()
    assert "AttributeError" in log_tail(result.log_path)
