"""Process-wide registry of secrets (GitLab tokens) that must never be logged or written.

Kept free of python-gitlab so the task graph (which emits events) can use it.
"""

from __future__ import annotations

import http.client
import logging
import threading
from typing import Any

REDACTED = "[REDACTED]"
_secrets: set[str] = set()
_lock = threading.Lock()
_factory_installed = False


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    for s in _secrets:
        if s and s in text:
            text = text.replace(s, REDACTED)
    return text


def has_secrets() -> bool:
    """Whether any secret is registered in this process."""
    return bool(_secrets)


def register_secret(secret: str) -> None:
    """Make sure ``secret`` never appears in any log record of this process (any logger)."""
    global _factory_installed
    if not secret or len(secret) < 4:
        return
    with _lock:
        _secrets.add(secret)
        if not _factory_installed:
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                if _secrets:
                    try:
                        msg = record.getMessage()
                    except Exception:  # noqa: BLE001 - a broken record is not ours to fix
                        return record
                    clean = redact(msg)
                    if clean != msg:
                        record.msg, record.args = clean, None
                return record

            logging.setLogRecordFactory(factory)
            _factory_installed = True
    guard_http_debug()


def guard_http_debug() -> None:
    """http.client's debug output prints request headers (the token) with print(): switch it off.

    (python-gitlab's ``enable_debug`` routes those prints into logging, where they are redacted.)
    """
    if http.client.HTTPConnection.debuglevel and not _prints_to_logging():
        logging.getLogger("b2luca.report").warning(
            "http.client debug output disabled by b2luca: it would print the GitLab token")
        http.client.HTTPConnection.debuglevel = 0


def _prints_to_logging() -> bool:
    return getattr(http.client, "print", print) is not print
