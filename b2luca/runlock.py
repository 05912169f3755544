"""One ``b2luca run`` per bucket at a time: an advisory ``fcntl`` lock on a file in the work dir.

The kernel releases an ``flock`` when the last process holding the open file ends, however it ends
(``kill -9`` included), so a dead holder never blocks the next run.  The holder writes who it is (pid,
host, start time, config) into the lock file so a refused run can name it.  Luigi's worker processes
are forked from the driver and share its open file: the lock is held until the last of them ends, so a
worker orphaned by a killed driver still keeps a second run away while it writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .errors import RunLockedError

LOCK_FILE = ".b2luca-run.lock"


def lock_path(work_dir: "str | os.PathLike[str]") -> Path:
    """The lock file of a bucket's work dir."""
    return Path(work_dir) / LOCK_FILE


def _describe_holder(text: str) -> str:
    """'pid 123 on host x since 2026-...' from the lock file's content (best effort)."""
    try:
        info = json.loads(text)
        holder = (f"pid {info['pid']} on host {info['host']}, started {info['started']}"
                  + (f" ({info['command']})" if info.get("command") else ""))
        if info["host"] == socket.gethostname() and not _alive(int(info["pid"])):
            holder += ("; that process is gone, but worker processes it started are still finishing their "
                       "task (the lock is released when the last one ends)")
        return holder
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet written its name into the lock file"


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(work_dir: "str | os.PathLike[str]", command: str = "") -> Iterator[Path]:
    """Hold the bucket's run lock for the ``with`` block; raise :class:`RunLockedError` at once if held.

    ``command`` (e.g. ``"b2luca run configs/demo.yaml"``) is recorded for the refusal message.
    """
    path = lock_path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(handle.read())
            raise RunLockedError(f"{Path(work_dir)}: another b2luca run of this bucket is in progress: {holder}; "
                                 f"wait for it to finish (lock file {path})") from None
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                                 "command": command}))
        handle.flush()
        try:
            yield path
        finally:
            # Leave the file (removing it would race with a waiter that opened it); empty the holder info.
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
                handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


__all__ = ["LOCK_FILE", "lock_path", "run_lock"]
