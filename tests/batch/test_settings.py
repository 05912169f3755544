"""The batch adapter's per-task settings, job environment and job entry, through b2luigi's own code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from b2luigi.batch.processes.slurm import SlurmProcess
from b2luigi.core.executable import create_executable_wrapper

from b2luca.config import load_config
from b2luca.tasks import CalibrationTask, CdstProduction, MakeRunDB, PullSettings
from b2luca.tasks.batch import apply_settings, job_environment, runs_as_job, secret_names, task_settings
from b2luca.tasks.context import context_for

from bucket_helpers import make_bucket
from fakebatch import SECRET

RESOURCES = {"default": {"cpus": 1, "memory_mb": 1500, "walltime_min": 30},
             "per_task": {"VXDCDCAlignment": {"cpus": 2, "memory_mb": 4321, "walltime_min": 90, "queue": "long"},
                          "CdstProduction": {"cpus": 1, "memory_mb": 999, "walltime_min": 5}}}


@pytest.fixture
def slurm_cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("GITLAB_TOKEN", SECRET)
    monkeypatch.setenv("MY_GL_ACCESS", SECRET + "-2")
    path = make_bucket(tmp_path, changes={
        "batch.system": "slurm", "batch.resources": RESOURCES,
        "report.transport": "gitlab",
        "report.gitlab": {"url": "https://gitlab.example", "project": "belle2/calib", "token_env": "MY_GL_ACCESS"}})
    context_for.cache_clear()
    return load_config(path)


def test_each_task_gets_a_fresh_complete_dict(slurm_cfg):
    path = str(slurm_cfg.path)
    align = CalibrationTask(config_path=path, name="VXDCDCAlignment")
    cdc = CalibrationTask(config_path=path, name="CDCTimeZeros")
    prod = CdstProduction(config_path=path, run_number=3)
    a, c, p = (task_settings(slurm_cfg, t, 1) for t in (align, cdc, prod))
    assert a["slurm_settings"] == {"job-name": "b2luca-demo-VXDCDCAlignment", "export": "NIL", "cpus-per-task": 2,
                                   "mem": "4321M", "time": 90, "partition": "long"}
    assert c["slurm_settings"]["mem"] == "1500M" and "partition" not in c["slurm_settings"]
    assert p["slurm_settings"]["mem"] == "999M" and p["slurm_settings"]["time"] == 5  # by family
    assert a["slurm_settings"] is not task_settings(slurm_cfg, align, 1)["slurm_settings"]  # new every call
    assert a["executable"][0] == sys.executable and os.path.isabs(a["executable"][0])
    assert a["working_dir"] == str(slurm_cfg.work_dir) and os.path.isabs(a["working_dir"])
    assert a["task_cmd_additional_args"] == ["--config", str(slurm_cfg.path)]
    assert a["get_log_file_dir"]().endswith("/VXDCDCAlignment/attempt-1/")
    assert task_settings(slurm_cfg, align, 2)["get_log_file_dir"]().endswith("/attempt-2/")
    assert runs_as_job(slurm_cfg, align) and runs_as_job(slurm_cfg, prod)
    assert not runs_as_job(slurm_cfg, MakeRunDB(config_path=path))  # the RunDB key stays on the login node


def test_no_setting_leaks_between_jobs_in_b2luigis_submit_file(slurm_cfg):
    """b2luigi merges a task's slurm_settings into a global dict: the second task must not inherit the first's."""
    path = str(slurm_cfg.path)
    align = CalibrationTask(config_path=path, name="VXDCDCAlignment")
    cdc = CalibrationTask(config_path=path, name="CDCTimeZeros")
    files = {}
    for task in (align, cdc):
        apply_settings(task, task_settings(slurm_cfg, task, 1))
        files[task.name] = SlurmProcess(task, None, None, 0)._create_slurm_submit_file().read_text()
    assert "--partition=long" in files["VXDCDCAlignment"] and "--mem=4321M" in files["VXDCDCAlignment"]
    assert "--partition" not in files["CDCTimeZeros"] and "--mem=1500M" in files["CDCTimeZeros"]
    assert "--export=NIL" in files["CDCTimeZeros"]
    wrapper = open(create_executable_wrapper(cdc)).read()
    assert f"--batch-runner --task-id {cdc.task_id} --config {path}" in wrapper
    assert f"cd {slurm_cfg.work_dir}" in wrapper


def test_job_environment_holds_no_secret(slurm_cfg, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/opt/x")
    names = secret_names(slurm_cfg)
    assert {"GITLAB_TOKEN", "MY_GL_ACCESS"} <= names  # by pattern and by the configured token_env
    env = job_environment(slurm_cfg, slurm_cfg.batch.default_resources)
    assert env["PYTHONPATH"] == "/opt/x" and env["B2LUCA_BATCH_JOB"] == "1"
    assert not any(SECRET in v for v in env.values()) and not names & set(env)
    wrapper_task = CalibrationTask(config_path=str(slurm_cfg.path), name="CDCTimeZeros")
    apply_settings(wrapper_task, task_settings(slurm_cfg, wrapper_task, 1))
    assert SECRET not in open(create_executable_wrapper(wrapper_task)).read()


def test_batch_runner_entry_runs_one_task(tmp_path):
    """What a job runs: ``python -m b2luca --batch-runner --task-id ID --config YAML``."""
    path = make_bucket(tmp_path)
    context_for.cache_clear()
    task = PullSettings(config_path=str(path))  # a task that needs no simulated data
    done = subprocess.run([sys.executable, "-m", "b2luca", "--batch-runner", "--task-id", task.task_id,
                           "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert task.complete()
    bad = subprocess.run([sys.executable, "-m", "b2luca", "--batch-runner", "--task-id", "NoSuchTask_123",
                          "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "NoSuchTask_123" in bad.stderr and "Traceback" not in bad.stderr


def test_batch_keys_defaults_values_and_mistakes(tmp_path):
    from b2luca.errors import ConfigError

    for name in ("a", "b", "batch_retries", "batch_status_cache_ttl", "batch_system"):
        (tmp_path / name).mkdir()
    cfg = load_config(make_bucket(tmp_path / "a"))
    assert (cfg.batch.retries, cfg.batch.status_cache_ttl, cfg.batch.progress_interval) == (1, 2.0, 10.0)
    cfg = load_config(make_bucket(tmp_path / "b", changes={"batch.system": "htcondor", "batch.retries": 3,
                                                           "batch.status_cache_ttl": 0.5,
                                                           "batch.progress_interval": 30}))
    assert (cfg.batch.system, cfg.batch.retries, cfg.batch.status_cache_ttl, cfg.batch.progress_interval) == (
        "htcondor", 3, 0.5, 30)
    for key, value in (("batch.retries", -1), ("batch.status_cache_ttl", 0), ("batch.system", "pbs")):
        path = make_bucket(tmp_path / key.replace(".", "_"), changes={key: value})
        with pytest.raises(ConfigError, match=rf"{path}.*{key.replace('.', '[.]')}"):
            load_config(path)


def test_missing_batch_commands_stop_the_run_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    path = make_bucket(tmp_path, changes={"batch.system": "lsf"})
    cfg = load_config(path)
    from b2luca.errors import ConfigError
    from b2luca.tasks.batch import worker_factory

    with pytest.raises(ConfigError, match=rf"{path}: batch.system: lsf, but bsub, bjobs, bkill is not on PATH"):
        worker_factory(object(), cfg)
