"""Integrity of local conditions databases: every database.txt line parseable and every payload intact.

A payload file stores the SHA-256 of its content (``__checksum__`` in its metadata, see
:mod:`b2luca.conditions.payload`); :func:`check_payload_file` reads the arrays back, recomputes the checksum
and compares. :func:`verify_database` checks a whole database directory and returns one line per damage
(file, line and what is wrong); ``b2luca status`` prints them and ``b2luca run`` does not report success
while the bucket's prompt database has any.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatabaseError, PayloadError
from .payload import payload_checksum, read_payload_and_meta

__all__ = ["bucket_databases", "check_payload_file", "damage_report", "verify_database", "verify_databases"]


def check_payload_file(path: "str | Path") -> tuple[str | None, str | None]:
    """``(checksum, None)`` for an intact payload file, ``(None, problem)`` for a missing or damaged one."""
    _, checksum, problem = read_checked(path)
    return checksum, problem


def read_checked(path: "str | Path") -> tuple[dict[str, np.ndarray] | None, str | None, str | None]:
    """``(arrays, checksum, None)`` for an intact payload file, ``(None, None, problem)`` for a missing or
    damaged one: the file is opened once, its content checked against the checksum stored in it."""
    path = Path(path)
    if not path.is_file():
        return None, None, "payload file is missing"
    try:
        arrays, meta = read_payload_and_meta(path)
        stored = meta.get("__checksum__") if isinstance(meta, dict) else None
        actual = payload_checksum(arrays)
    except (PayloadError, OSError, ValueError, KeyError, TypeError) as exc:
        return None, None, f"unreadable ({' '.join(str(exc).split())[:200]})"
    except Exception as exc:  # uproot raises many kinds for random bytes
        return None, None, f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    if stored is not None and stored != actual:  # a file without a stored checksum is only checked for readability
        return None, None, f"content checksum {actual[:12]}… does not match the stored {str(stored)[:12]}…"
    return arrays, actual, None


def verify_database(directory: "str | Path") -> list[str]:
    """Problems of one local database directory (empty list: intact or absent), one line each.

    Every line must parse; every payload file of a line still in force must be intact. A damaged
    revision that a later line of the same payload covers completely (``b2luca run --rerun NAME``
    stores such a line) no longer counts.
    """
    from .database import DATABASE_FILE, parse_database_lines  # database.py imports this module

    directory = Path(directory)
    txt = directory / DATABASE_FILE
    if not txt.exists():
        return []
    entries, problems = parse_database_lines(txt)
    seen: set[Path] = set()
    by_name: dict[str, list] = {}
    for _, entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    for number, entry in entries:
        same = by_name[entry.name]
        later = same[same.index(entry) + 1:]
        if entry.path in seen or _superseded(entry, later):
            continue
        seen.add(entry.path)
        _, problem = check_payload_file(entry.path)
        if problem:
            problems.append(f"{txt}:{number}: {entry.line()}: {entry.path.name}: {problem}")
    return problems


def _superseded(entry, later: list) -> bool:
    """True when a later line of the same payload covers the whole IoV of ``entry`` (the last line wins)."""
    return any(other.name == entry.name and other.iov.contains(entry.iov) for other in later)


def verify_databases(directories: "list[Path]") -> list[str]:
    """Problems of several database directories (see :func:`verify_database`)."""
    problems: list[str] = []
    for directory in directories:
        try:
            problems += verify_database(directory)
        except (DatabaseError, OSError) as exc:
            problems.append(f"{directory}: {' '.join(str(exc).split())}")
    return problems


def bucket_databases(cfg) -> list[Path]:
    """The database directories a bucket uses: prompt global tag, the chain, the reference (``BucketConfig``)."""
    cond = cfg.conditions
    names = [cond.prompt_global_tag, *cond.database_chain, *([cond.reference_global_tag]
                                                             if cond.reference_global_tag else [])]
    return [cond.directory / name for name in dict.fromkeys(names)]


def damage_report(problems: list[str]) -> list[str]:
    """The lines ``status`` and ``run`` print for a damaged conditions directory."""
    return (["conditions database DAMAGED:"] + [f"  {line}" for line in problems]
            + ["  a damaged payload of a calibration is superseded by a new revision with "
               "`b2luca run CONFIG --rerun NAME`; a bad database.txt line must be fixed or removed by hand"])
