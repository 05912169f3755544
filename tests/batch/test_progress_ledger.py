"""Live progress (plain lines off a terminal, a rich table on one) and the on-disk job ledger."""

from __future__ import annotations

import io
import os
import time
from types import SimpleNamespace

from b2luca.tasks.ledger import JobLedger, format_ledger, ledger_path, read_ledger
from b2luca.tasks.progress import Progress, read_progress

LABELS = {"t1": ("CDCTimeZeros", "raw"), "t2": ("SVDTimeOffsets", "raw"), "t3": ("BeamSpot", "cdst"),
          "t4": ("CdstProduction:r00001", "cdst_production")}


def _records(**states):
    return {tid: SimpleNamespace(status=s) for tid, s in states.items()}


def test_ledger_round_trip_and_live_jobs(tmp_path):
    ledger = JobLedger(ledger_path(tmp_path))
    assert ledger.submitted("t1", "CDCTimeZeros", "slurm", [17], tmp_path / "a1") == 1
    ledger.set_state("t1", "retrying", attempt_state="failed")
    assert ledger.submitted("t1", "CDCTimeZeros", "slurm", [18], tmp_path / "a2") == 2
    ledger.submitted("t2", "SVDTimeOffsets", "slurm", [19], tmp_path / "b1")
    ledger.set_state("t2", "done")
    again = JobLedger(ledger_path(tmp_path))  # a restarted driver reads the same picture
    assert again.attempts("t1") == 2 and again.live_job("t1")["job_ids"] == ["18"]
    assert again.live_job("t2") is None and [t for t, _ in again.live_jobs()] == ["t1"]
    assert [a["state"] for a in again.entry("t1")["attempts"]] == ["failed", "queued"]
    table = format_ledger(read_ledger(ledger_path(tmp_path)))
    assert "17,18" in table and "CDCTimeZeros" in table and "done" in table


def test_plain_lines_when_not_a_terminal(tmp_path):
    stream = io.StringIO()
    jobs = {"t2": {"state": "queued", "attempts": [{"job_ids": ["42"]}]}}
    records = _records(t1="DONE", t2="RUNNING", t3="PENDING")
    with Progress(tmp_path, LABELS, lambda: records, lambda: jobs, stream=stream, interval=0.05, tick=0.05) as p:
        snap = p.snapshot()
        assert snap["stages"]["raw"] == {"pending": 0, "queued": 1, "running": 0, "done": 1, "failed": 0}
        assert snap["stages"]["cdst_production"]["pending"] == 1  # not yet known to the scheduler
        assert snap["running"] == ["SVDTimeOffsets [job 42] (queued)"]
        time.sleep(0.3)
        live = read_progress(tmp_path)
        assert live["alive"] and live["pid"] == os.getpid()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2 and "\x1b" not in stream.getvalue()
    assert "raw 1/2 (1 queued)" in lines[0] and "running: SVDTimeOffsets [job 42] (queued)" in lines[0]
    assert read_progress(tmp_path)["finished"] and not read_progress(tmp_path)["alive"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_table_on_a_terminal(tmp_path):
    stream = _Tty()
    records = _records(t1="RUNNING", t2="FAILED")
    with Progress(tmp_path, LABELS, lambda: records, None, stream=stream, interval=0.05, tick=0.05) as p:
        time.sleep(0.3)
    out = stream.getvalue()
    assert "\x1b[" in out and "pending" in out and "failed" in out and "CDCTimeZeros" in out
    assert p.lines_printed == 0  # the table, not plain lines


def test_every_tick_calls_on_tick_and_its_errors_do_not_stop_the_progress(tmp_path):
    calls = []

    def on_tick():
        calls.append(time.time())
        if len(calls) == 1:
            raise OSError("disk full")  # the reporter's trouble must not end the progress display

    with Progress(tmp_path, LABELS, lambda: _records(t1="RUNNING"), None, stream=io.StringIO(),
                  interval=0.05, tick=0.02, on_tick=on_tick):
        deadline = time.time() + 5
        while len(calls) < 3 and time.time() < deadline:
            time.sleep(0.01)
    assert len(calls) >= 3
    assert read_progress(tmp_path)["finished"]  # the final sample was still written
