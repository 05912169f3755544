"""One-line causes of failures: from an exception, from luigi's failure explanation, from a job's log.

The console line of a failed task, status.json and the calibration's report carry this line, so the
cause is visible without opening luigi.log or calibrate.log.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: The longest cause shown on one console line.
MAX_CAUSE = 300
_TRACEBACK = "Traceback (most recent call last):"
# basf2's own log levels for a fatal problem
_BASF2_LINE = re.compile(r"\[(?:FATAL|ERROR)\]")


def shorten(text: str, limit: int = MAX_CAUSE) -> str:
    """The first non-empty line of ``text``, at most ``limit`` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def cause_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception (the type alone when the message is empty)."""
    message = shorten(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def cause_from_expl(expl: object) -> str:
    """The first line of a failure explanation luigi passed to the scheduler (JSON-encoded or plain)."""
    if isinstance(expl, str):
        try:
            decoded = json.loads(expl)
        except ValueError:
            decoded = expl
        expl = decoded
    if not isinstance(expl, str):
        return ""
    return shorten(expl)


def cause_from_log(path: "str | Path") -> str:
    """The cause of a failed script from its log: the exception line of the last Python traceback, else the
    last basf2 ``[FATAL]``/``[ERROR]`` line; empty when neither is found."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    start = max((i for i, line in enumerate(lines) if line.strip() == _TRACEBACK), default=None)
    if start is not None:
        for line in lines[start + 1:]:
            if line.strip() and not line[0].isspace():  # frames are indented; the exception line is not
                return shorten(line)
    for line in reversed(lines):
        if _BASF2_LINE.search(line):
            return shorten(line)
    return ""


__all__ = ["MAX_CAUSE", "cause_from_expl", "cause_from_log", "cause_line", "shorten"]
