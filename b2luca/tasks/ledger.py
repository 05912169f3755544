"""The job ledger of a bucket run on a batch cluster: task -> job ids, attempts, state, log paths.

One JSON file, ``<work_dir>/batch/ledger.json``, rewritten atomically by the driver at every change, so
``b2luca status`` (another process) and a restarted driver (after ``kill -9``) read a consistent picture.

Per task: ``{"name", "system", "state", "attempts": [{"attempt", "job_ids", "state", "submitted",
"finished", "log_dir"}]}``.  Task states: ``queued`` (submitted, status not yet seen running),
``running``, ``done``, ``failed``, ``retrying``, ``cancelled``.  Only the driver writes the file.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic

LIVE_STATES = ("queued", "running")


def ledger_path(work_dir: Path) -> Path:
    """Where the ledger of the bucket with this work dir lives."""
    return Path(work_dir) / "batch" / "ledger.json"


class JobLedger:
    """The on-disk job ledger (thread-safe within the driver; one driver per bucket)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.tasks: dict[str, dict[str, Any]] = read_ledger(self.path)

    # --- reading --------------------------------------------------------------------------------
    def entry(self, task_id: str) -> dict[str, Any] | None:
        """The ledger entry of a task, or None."""
        return self.tasks.get(task_id)

    def attempts(self, task_id: str) -> int:
        """How many jobs were submitted for the task so far (over all driver runs)."""
        entry = self.tasks.get(task_id)
        return len(entry["attempts"]) if entry else 0

    def live_job(self, task_id: str) -> dict[str, Any] | None:
        """The last attempt of the task when the ledger says it may still be queued or running."""
        entry = self.tasks.get(task_id)
        if entry and entry["attempts"] and entry["attempts"][-1]["state"] in LIVE_STATES:
            return entry["attempts"][-1]
        return None

    def live_jobs(self) -> list[tuple[str, dict[str, Any]]]:
        """(task id, attempt) of every attempt that may still be queued or running."""
        return [(tid, e["attempts"][-1]) for tid, e in self.tasks.items()
                if e["attempts"] and e["attempts"][-1]["state"] in LIVE_STATES]

    # --- writing --------------------------------------------------------------------------------
    def submitted(self, task_id: str, name: str, system: str, job_ids: list[str], log_dir: Path) -> int:
        """Record a new attempt; return its number (1-based)."""
        with self._lock:
            entry = self.tasks.setdefault(task_id, {"name": name, "system": system, "state": "queued",
                                                    "attempts": []})
            number = len(entry["attempts"]) + 1
            entry["attempts"].append({"attempt": number, "job_ids": [str(j) for j in job_ids], "state": "queued",
                                      "submitted": time.time(), "finished": None, "log_dir": str(log_dir)})
            entry["state"], entry["system"] = "queued", system
            self._save()
            return number

    def set_state(self, task_id: str, state: str, attempt_state: str | None = None, note: str | None = None) -> None:
        """Set the task's state (and its last attempt's, default the same); write only on change."""
        with self._lock:
            entry = self.tasks.get(task_id)
            if entry is None:
                return
            last = entry["attempts"][-1] if entry["attempts"] else None
            attempt_state = attempt_state or state
            if entry["state"] == state and (last is None or last["state"] == attempt_state) and note is None:
                return
            entry["state"] = state
            if last is not None:
                if last["state"] != attempt_state and attempt_state not in LIVE_STATES:
                    last["finished"] = time.time()
                last["state"] = attempt_state
                if note:
                    last.setdefault("notes", []).append(note)
            self._save()

    def _save(self) -> None:
        write_json_atomic(self.path, {"version": 1, "updated": time.time(), "tasks": self.tasks})


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """The tasks of a ledger file ({} when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("tasks", {})


def format_ledger(tasks: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: task, system, job ids (all attempts), attempts, state, last log dir."""
    header = ("task", "system", "job ids", "attempts", "state", "log")
    lines = [header]
    for entry in sorted(tasks.values(), key=lambda e: (e["attempts"][0]["submitted"] if e["attempts"] else 0)):
        ids = ",".join(j for a in entry["attempts"] for j in a["job_ids"])
        log = entry["attempts"][-1]["log_dir"] if entry["attempts"] else ""
        lines.append((entry["name"], entry["system"], ids, str(len(entry["attempts"])), entry["state"], log))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = ["  ".join(v.ljust(w) for v, w in zip(line[:-1], widths)) + "  " + line[-1] for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths) + "  ---")
    return "\n".join(out)


__all__ = ["JobLedger", "LIVE_STATES", "format_ledger", "ledger_path", "read_ledger"]
