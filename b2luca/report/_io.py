"""Small file helpers shared by the reporting layer (atomic writes, locks)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same dir, fsync, os.replace)."""
    write_text_atomic(path, text)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as pretty JSON."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: Path, default: Any) -> Any:
    """Read a JSON file; ``default`` if it does not exist. A corrupt file is an error naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc})") from exc


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True, timeout: float | None = None) -> Iterator[bool]:
    """Exclusive ``flock`` on ``path``; yields True if acquired, False otherwise (non-blocking).

    With ``blocking`` and a ``timeout``, polls until the lock is free or the timeout passes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    acquired = False
    try:
        if blocking and timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            acquired = True
        else:
            deadline = time.monotonic() + (timeout or 0.0)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    acquired = True
                    break
                except BlockingIOError:
                    if not blocking or time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
        yield acquired
    finally:
        if acquired:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
