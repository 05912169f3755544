"""Issue 17 item 1: one ``b2luca run`` per bucket; a dead holder (kill -9) never blocks the next run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from b2luca.cli import main
from b2luca.errors import RunLockedError
from b2luca.runlock import lock_path, run_lock

from bucket_helpers import make_bucket

# A second process that holds the bucket's run lock through the production code, then sleeps.
HOLDER = """
import sys, time
from b2luca.runlock import run_lock
with run_lock(sys.argv[1], command="b2luca run holder.yaml"):
    print("holding", flush=True)
    time.sleep(120)
"""


def _start_holder(work_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    return proc


def _b2luca(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "b2luca.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    return make_bucket(tmp_path)


def test_second_run_refuses_at_once_naming_the_holder(config: Path, tmp_path: Path):
    work_dir = tmp_path / "work"
    holder = _start_holder(work_dir)
    try:
        start = time.monotonic()
        second = _b2luca("run", str(config))
        elapsed = time.monotonic() - start
        assert second.returncode == 1, second.stderr
        assert f"pid {holder.pid}" in second.stderr and socket.gethostname() in second.stderr
        assert "started 20" in second.stderr and "in progress" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert not (work_dir / "luigi.log").exists() and not (tmp_path / "data").exists()  # it did nothing
        assert elapsed < 60  # refuses at once (the time is the interpreter's start and the config check)
        # --dry-run and status take no lock
        assert main(["run", str(config), "--dry-run"]) == 0
        assert main(["status", str(config)]) == 0
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_released(tmp_path: Path):
    holder = _start_holder(tmp_path)
    with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
        with run_lock(tmp_path):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with run_lock(tmp_path, command="b2luca run again.yaml"):  # the kernel released the flock
        info = json.loads(lock_path(tmp_path).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "b2luca run again.yaml"
    assert lock_path(tmp_path).read_text() == ""  # released: holder info cleared


def test_lock_is_reentrant_after_release_in_one_process(tmp_path: Path):
    with run_lock(tmp_path):
        with pytest.raises(RunLockedError):  # a second open file description conflicts, even in-process
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):
        pass


def test_lock_held_by_workers_of_a_killed_driver_says_so(tmp_path: Path):
    """luigi's worker processes are forked and share the lock: a driver killed with -9 leaves it held
    until they finish; the message then says the named process is gone."""
    pid_file = tmp_path / "worker.pid"
    child_code = HOLDER.replace(
        'print("holding", flush=True)',
        f'import os\n    if os.fork() == 0:\n        open({str(pid_file)!r}, "w").write(str(os.getpid()))\n'
        f'        time.sleep(120)\n        os._exit(0)\n    while not os.path.exists({str(pid_file)!r}):\n'
        f'        time.sleep(0.01)\n    print("holding", flush=True)')
    proc = subprocess.Popen([sys.executable, "-c", child_code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    info = json.loads(lock_path(tmp_path).read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.2)
    worker = int(pid_file.read_text())
    try:
        with pytest.raises(RunLockedError, match=f"pid {info['pid']} .*that process is gone, but worker processes"):
            with run_lock(tmp_path):
                pass
    finally:
        os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:  # once the last worker is gone, the lock is free
        try:
            with run_lock(tmp_path):
                break
        except RunLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
