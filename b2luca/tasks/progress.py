"""Progress while a bucket runs (local or batch): a live table on a terminal, plain lines otherwise.

A background thread in the driver samples the scheduler's records (and the job ledger, which knows
whether a submitted job still waits in the queue) every second.  On a terminal it redraws one table
with ``rich`` (queued/running/done/failed per stage, the calibrations running now, elapsed time);
when stdout is not a terminal it prints one plain line every ``batch.progress_interval`` seconds.
Every sample is also written to ``<work_dir>/progress.json``, which ``b2luca status`` shows from
another shell while the run is in progress.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from ..atomic import write_json_atomic

COLUMNS = ("pending", "queued", "running", "done", "failed")
_STATES = {"DONE": "done", "FAILED": "failed", "RUNNING": "running", "PENDING": "pending",
           "DISABLED": "failed", "UNKNOWN": "failed"}


def progress_path(work_dir: Path) -> Path:
    """Where the live progress of a bucket run is written."""
    return Path(work_dir) / "progress.json"


class Progress:
    """Samples the run and shows it; use as a context manager around ``luigi.build``."""

    def __init__(self, work_dir: Path, labels: dict[str, tuple[str, str]], records: Callable[[], dict],
                 ledger: Callable[[], dict] | None = None, stream: TextIO | None = None,
                 interval: float = 10.0, tick: float = 1.0, on_tick: Callable[[], Any] | None = None) -> None:
        """``labels``: task id -> (name, stage) of every task to count; ``records()``: the scheduler's
        records (task id -> object with ``status``); ``ledger()``: the job ledger's tasks, or None;
        ``on_tick()``: called every tick (the driver brings the local report files up to date)."""
        self.on_tick = on_tick
        self.path = progress_path(work_dir)
        self.labels, self.records, self.ledger = labels, records, ledger
        self.stream = stream or sys.stdout
        self.interval, self.tick = interval, tick
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None
        self.lines_printed = 0

    # --- sampling -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Counts per stage, the tasks running now (with job ids on a batch system), elapsed seconds."""
        records = dict(self.records() or {})
        jobs = (self.ledger() or {}) if self.ledger else {}
        stages: dict[str, dict[str, int]] = {}
        running: list[str] = []
        for task_id, (name, stage) in self.labels.items():
            record = records.get(task_id)
            state = _STATES.get(record.status, "pending") if record is not None else "pending"
            job = jobs.get(task_id)
            if state == "running" and job is not None and job.get("state") == "queued":
                state = "queued"
            counts = stages.setdefault(stage, dict.fromkeys(COLUMNS, 0))
            counts[state] += 1
            if state in ("running", "queued"):
                ids = ",".join(job["attempts"][-1]["job_ids"]) if job and job.get("attempts") else ""
                running.append(f"{name}" + (f" [job {ids}]" if ids else "") + (" (queued)" if state == "queued" else ""))
        return {"pid": os.getpid(), "started": self.started, "updated": time.time(),
                "elapsed": time.time() - self.started, "stages": stages, "running": running, "finished": False}

    @staticmethod
    def line(snap: dict[str, Any]) -> str:
        """One plain line: elapsed, per stage done/total and the non-zero states, what runs now."""
        parts = []
        for stage, c in snap["stages"].items():
            total = sum(c.values())
            extra = " ".join(f"{c[k]} {k}" for k in ("queued", "running", "failed") if c[k])
            parts.append(f"{stage} {c['done']}/{total}" + (f" ({extra})" if extra else ""))
        now = ", ".join(snap["running"][:4]) + (" ..." if len(snap["running"]) > 4 else "")
        return f"[{snap['elapsed']:6.0f} s] " + "; ".join(parts) + (f" | running: {now}" if now else "")

    @staticmethod
    def table(snap: dict[str, Any]):
        """The same as a ``rich`` table."""
        from rich.table import Table

        table = Table(title=f"b2luca: {snap['elapsed']:.0f} s", title_justify="left")
        table.add_column("stage")
        for column in COLUMNS:
            table.add_column(column, justify="right")
        for stage, counts in snap["stages"].items():
            table.add_row(stage, *(str(counts[k]) for k in COLUMNS))
        if snap["running"]:
            table.caption = "running: " + ", ".join(snap["running"])
            table.caption_justify = "left"
        return table

    # --- the thread ---------------------------------------------------------------------------------
    def _write(self, snap: dict[str, Any]) -> None:
        try:
            write_json_atomic(self.path, snap, durable=False)  # a live display, rewritten every tick
        except OSError:  # progress must never break the run
            pass

    def _loop(self) -> None:
        last_line = 0.0
        while not self._stop.wait(self.tick):
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception:  # noqa: BLE001 - the reporter logs its own trouble; progress goes on
                    pass
            try:
                snap = self.snapshot()
            except Exception:  # the scheduler's dict changed under us: next tick
                continue
            self._write(snap)
            if self._live is not None:
                self._live.update(self.table(snap))
            elif time.time() - last_line >= self.interval:
                print(self.line(snap), file=self.stream, flush=True)
                self.lines_printed += 1
                last_line = time.time()

    def __enter__(self) -> "Progress":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if getattr(self.stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.table(self.snapshot()), console=Console(file=self.stream), refresh_per_second=2,
                              transient=True)
            self._live.start()
        self._thread = threading.Thread(target=self._loop, name="b2luca-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._live is not None:
            self._live.stop()
        try:
            snap = self.snapshot()
        except Exception:
            return
        snap["finished"] = True
        self._write(snap)


def read_progress(work_dir: Path) -> dict[str, Any] | None:
    """The last progress sample of the bucket, with ``alive`` telling whether its driver still runs."""
    import json

    path = progress_path(work_dir)
    if not path.is_file():
        return None
    try:
        snap = json.loads(path.read_text())
    except ValueError:
        return None
    alive = False
    if not snap.get("finished"):
        try:
            os.kill(int(snap["pid"]), 0)
            alive = True
        except (OSError, KeyError, ValueError):
            alive = False
    snap["alive"] = alive
    return snap


__all__ = ["Progress", "progress_path", "read_progress"]
