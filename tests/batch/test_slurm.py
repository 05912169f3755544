"""The demo bucket on a real Slurm (``.ci/slurm start``): Ctrl-C, kill -9 and restart, a retried job, no secret.

One flow per session (the data is simulated once): a local run for reference, then on Slurm
(1) a run interrupted with SIGINT while its first jobs are queued or running: every job is cancelled;
(2) a run killed with ``kill -9`` while jobs run (one calibration fails its first attempt and is retried);
``b2luca status`` is asked from another process meanwhile;
(3) a rerun that finishes, re-adopting what (2) left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from b2luca.conditions import GlobalTag
from b2luca.config import load_config
from b2luca.tasks.cdst import group_task_name, production_groups
from b2luca.tasks.context import context_for
from b2luca.tasks.driver import run_bucket
from b2luca.tasks.ledger import ledger_path, read_ledger

from bucket_helpers import copy_calibrations
from fakebatch import SECRET

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAIL_ONCE = '''    import pathlib as _pathlib
    _armed, _fired = _pathlib.Path({armed!r}), _pathlib.Path({fired!r})
    if _armed.exists() and not _fired.exists():
        _fired.write_text("fired")
        raise RuntimeError("injected failure: the first attempt of this job fails")
'''


def _bucket(base: Path, simulated, changes: dict | None = None, calibrations: Path | None = None) -> Path:
    """A bucket YAML under ``base`` on the session's simulated bucket (``tests/conftest.py``)."""
    base.mkdir()
    return simulated.config(base, calibrations=calibrations, changes=dict(changes or {}))


def _wait(predicate, timeout: float, what: str, process: subprocess.Popen | None = None):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"driver exited ({process.returncode}) before: {what}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for: {what}")


def _squeue_ids() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())


@pytest.fixture(scope="module")
def flow(slurm, simulated_bucket, tmp_path_factory):
    # Single-threaded BLAS in both runs (jobs inherit these variables), so threading is not one more source
    # of rounding differences between the local and the Slurm run.
    with pytest.MonkeyPatch.context() as mp:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            mp.setenv(name, "1")
        yield _flow(simulated_bucket, tmp_path_factory)


def _flow(simulated, tmp_path_factory):
    base = tmp_path_factory.mktemp("slurm-flow")
    # reference: the same bucket run locally
    local = load_config(_bucket(base / "local", simulated))
    context_for.cache_clear()
    local_out: list[str] = []
    assert run_bucket(local, workers=2, echo=local_out.append).exit_code == 0, "\n".join(local_out)

    calibrations = copy_calibrations(base)
    armed, fired = base / "fail-armed", base / "fail-fired"
    script = calibrations / "svd_time_offsets.py"
    text = script.read_text()
    marker = '"""Compute the SVD time offsets from the hadron_calib raw hits and store them in job.output_db."""\n'
    assert marker in text
    script.write_text(text.replace(marker, marker + FAIL_ONCE.format(armed=str(armed), fired=str(fired))))
    config = _bucket(base / "slurm", simulated, calibrations=calibrations,
                     changes={"batch.system": "slurm", "batch.workers": 6, "batch.status_cache_ttl": 1,
                              "batch.retries": 1, "batch.progress_interval": 2})
    cfg = load_config(config)
    env = {**os.environ, "GITLAB_TOKEN": SECRET}
    command = [sys.executable, "-m", "b2luca", "run", str(config)]
    ledger = ledger_path(cfg.work_dir)
    logs = base / "driver"
    logs.mkdir()

    def start(n: int) -> subprocess.Popen:
        return subprocess.Popen(command, env=env, stdout=open(logs / f"run{n}.log", "w"), stderr=subprocess.STDOUT)

    def live() -> dict:
        tasks = read_ledger(ledger) if ledger.is_file() else {}
        return {t: e for t, e in tasks.items() if e["state"] in ("queued", "running")}

    # (1) Ctrl-C while jobs wait or run: the driver cancels them
    first = start(1)
    _wait(lambda: len(live()) >= 2, 120, "two live jobs", first)
    time.sleep(1.0)
    first.send_signal(signal.SIGINT)
    rc1 = first.wait(timeout=120)
    after_interrupt = read_ledger(ledger)
    time.sleep(2.0)  # scancel is asynchronous
    left_in_queue = _squeue_ids() & {j for e in after_interrupt.values() for a in e["attempts"] for j in a["job_ids"]}

    # (2) kill -9 while jobs run; SVDTimeOffsets fails its first attempt in this run
    armed.write_text("armed")
    second = start(2)

    def svd_done_and_jobs_running():
        tasks = read_ledger(ledger)
        svd = [e for e in tasks.values() if e["name"] == "SVDTimeOffsets"]
        return svd and svd[0]["state"] == "done" and live()

    _wait(svd_done_and_jobs_running, 300, "SVDTimeOffsets retried and done while other jobs run", second)
    status = subprocess.run([sys.executable, "-m", "b2luca", "status", str(config)], env=env, capture_output=True,
                            text=True, timeout=120)
    at_kill = read_ledger(ledger)
    live_at_kill = {t for t, e in at_kill.items() if e["state"] in ("queued", "running")}
    os.kill(second.pid, signal.SIGKILL)
    second.wait()

    # (3) rerun: finishes, adopting what is still running
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    context_for.cache_clear()
    return SimpleNamespace(local=local, cfg=cfg, rc1=rc1, run1=(logs / "run1.log").read_text(),
                           after_interrupt=after_interrupt, left_in_queue=left_in_queue, status=status,
                           at_kill=at_kill, live_at_kill=live_at_kill, third=third, final=read_ledger(ledger),
                           logs=logs, fired=fired)


def test_rerun_finishes_and_every_calibration_and_production_was_a_slurm_job(flow):
    assert flow.third.returncode == 0, flow.third.stdout[-3000:] + flow.third.stderr[-3000:]
    assert "bucket demo: SUCCESS" in flow.third.stdout and "batch jobs (slurm" in flow.third.stdout
    ctx = context_for(str(flow.cfg.path))
    # one job per cDST production task: the runs grouped by data volume (data.production_task_mb)
    expected = set(ctx.plan.order) | {group_task_name(runs) for runs in production_groups(ctx)}
    assert sorted(r for runs in production_groups(ctx) for r in runs) == list(range(1, 9))
    by_name = {e["name"]: e for e in flow.final.values()}
    assert set(by_name) == expected  # setup, local copies and archiving ran in the driver
    all_ids = [j for e in flow.final.values() for a in e["attempts"] for j in a["job_ids"]]
    assert len(all_ids) == len(set(all_ids))
    for name, entry in by_name.items():
        assert entry["state"] == "done", (name, entry)
        job_id = entry["attempts"][-1]["job_ids"][0]
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        assert f"JobName=b2luca-demo-{name}" in shown and "JobState=COMPLETED" in shown, (name, shown[:300])


def test_payloads_identical_to_the_local_run_without_duplicate_revisions(flow):
    local = GlobalTag.open(flow.local.conditions.directory, flow.local.conditions.prompt_global_tag).db
    slurm = GlobalTag.open(flow.cfg.conditions.directory, flow.cfg.conditions.prompt_global_tag).db
    def key(e):
        return e.name, int(e.revision), str(e.iov)

    local_entries, slurm_entries = sorted(local.entries(), key=key), sorted(slurm.entries(), key=key)
    assert [key(e) for e in slurm_entries] == [key(e) for e in local_entries]  # no extra revision
    assert len({key(e)[:2] for e in local_entries}) == len(local_entries)
    # Integer arrays (ids, counts, masks) are equal; floating-point ones agree to 1e-6 of their scale. They are
    # not bit-identical even between two local runs: numpy's SIMD reductions depend on memory alignment, and
    # the 1e-15 differences in CDCTimeZeros grow to ~1e-7 through the alignment fit downstream.
    for mine, theirs in zip(slurm_entries, local_entries):
        a, b = slurm.read(mine), local.read(theirs)
        assert sorted(a) == sorted(b), mine.name
        for name in a:
            assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype, (mine.name, name)
            if a[name].dtype.kind != "f":
                assert np.array_equal(a[name], b[name]), (mine.name, name)
            elif a[name].size:
                scale = max(float(np.nanmax(np.abs(b[name]))), 1e-300)
                assert np.array_equal(np.isnan(a[name]), np.isnan(b[name])), (mine.name, name)
                assert float(np.nanmax(np.abs(a[name] - b[name]))) <= 1e-6 * scale, (mine.name, name)


def test_ctrl_c_cancels_the_buckets_jobs(flow):
    assert flow.rc1 == 130, flow.run1[-2000:]
    assert "cancelled" in flow.run1 or "interrupted" in flow.run1
    attempts = [a for e in flow.after_interrupt.values() for a in e["attempts"]]
    assert attempts and all(a["state"] in ("cancelled", "done") for a in attempts), attempts
    assert any(a["state"] == "cancelled" for a in attempts)
    assert not flow.left_in_queue


def test_failed_job_is_retried_with_both_logs_kept(flow):
    assert flow.fired.exists()
    (svd,) = [e for e in flow.final.values() if e["name"] == "SVDTimeOffsets"]
    states = [a["state"] for a in svd["attempts"]]
    assert states[-2:] == ["failed", "done"], states
    failed, done = (Path(a["log_dir"]) for a in svd["attempts"][-2:])
    assert failed != done
    assert "injected failure" in (failed / "calibrate.log").read_text()
    assert "exited with code" in (failed / "stderr").read_text()
    assert (done / "stdout").is_file() and "injected failure" not in (done / "calibrate.log").read_text()
    rows = [line.split() for line in flow.third.stdout.splitlines() if line.startswith("SVDTimeOffsets ")]
    ledger_rows = [r for r in rows if r[1] == "slurm"]  # the batch jobs table of the report
    assert ledger_rows and ledger_rows[0][3] == str(len(svd["attempts"])), rows  # attempts in the report


def test_kill_9_and_restart_neither_loses_nor_duplicates_jobs(flow):
    assert flow.live_at_kill, "the driver was killed while no job ran"
    for task_id, entry in flow.final.items():
        before = flow.at_kill.get(task_id)
        done = [a for a in entry["attempts"] if a["state"] == "done"]
        assert len(done) == 1 and entry["attempts"][-1] is not None and entry["attempts"][-1]["state"] == "done"
        if before is not None and before["state"] == "done":  # finished before the kill: no new job
            assert len(entry["attempts"]) == len(before["attempts"]), entry["name"]
        if task_id in flow.live_at_kill:  # still running at the kill: adopted (or finished alone), not resubmitted
            assert len(entry["attempts"]) == len(before["attempts"]), entry["name"]
            notes = entry["attempts"][-1].get("notes", [])
            assert any("adopted" in n or "no driver" in n for n in notes), notes


def test_status_from_another_shell_shows_the_run_and_job_ids(flow):
    assert flow.status.returncode == 0, flow.status.stderr
    assert "run in progress (driver pid" in flow.status.stdout
    ids = {j for e in flow.at_kill.values() for a in e["attempts"] for j in a["job_ids"]}
    assert "batch jobs (ledger" in flow.status.stdout and any(j in flow.status.stdout for j in ids)


def test_no_job_file_or_log_carries_the_token(flow):
    checked = 0
    for root in (flow.cfg.work_dir / "batch", flow.cfg.work_dir / "calibrations", flow.logs):
        for path in root.rglob("*"):
            if path.is_file() and path.suffix != ".root":
                assert SECRET not in path.read_text(errors="replace"), path
                checked += 1
    assert checked > 50
    wrapper = next((flow.cfg.work_dir / "batch" / "jobs").rglob("executable_wrapper.sh")).read_text()
    assert "env" in wrapper and "GITLAB_TOKEN" not in wrapper
