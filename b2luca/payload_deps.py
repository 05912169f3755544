"""Declared versus actual payload dependencies of a calibration.

The native runner records every payload a calibration looked up in its database chain
(``payloads_read.json`` beside ``caf_config.json``).  A payload that another calibration of this bucket
produces may only be read when that calibration is guaranteed to have finished first: it is one of
the reader's ``depends_on`` (directly or transitively), or it runs in an earlier stage (raw before
cDST).  Anything else is an undeclared dependency: the reader got whatever happened to be in force
when it ran (the nominal constants, a failed calibration's absence, or the previous bucket run's
revision), so its result depends on scheduling.  That is an error, not a warning: the payloads would
otherwise be published, and nobody reads warnings of an automated run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .enums import Stage
from .errors import UndeclaredDependencyError

#: Written by the native runner into the calibration's working directory.
READS_FILE = "payloads_read.json"
_STAGE_ORDER = (Stage.RAW, Stage.CDST)


def write_reads(path: "str | Path", lookups: Iterable[dict[str, Any]]) -> None:
    """Write the payload look-ups of a calibration (see :meth:`DatabaseChain.lookups`)."""
    from .atomic import write_json_atomic

    write_json_atomic(Path(path), {"lookups": list(lookups)})


def read_names(path: "str | Path") -> list[str] | None:
    """The payload names a calibration looked up, or None when the runner recorded none (basf2 runner)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return list(dict.fromkeys(str(item["name"]) for item in document["lookups"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise UndeclaredDependencyError(f"{path}: not a valid record of payload look-ups: {exc}") from None


def undeclared_reads(catalogue: Any, plan: Any, name: str, read: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``[(payload, [producers])]``: payloads ``name`` read that calibrations of this bucket produce which
    are neither ``name`` itself, nor what it depends on (transitively), nor in an earlier stage."""
    stage = plan.group_of(name)[0]
    earlier = set(_STAGE_ORDER[:_STAGE_ORDER.index(stage)]) if stage in _STAGE_ORDER else set()
    allowed = {name, *plan.dependencies(name)}
    problems = []
    for payload in read:
        producers = [info.name for info in catalogue
                     if payload in info.settings.produced_payloads and info.name not in allowed
                     and plan.group_of(info.name)[0] not in earlier]
        if producers:
            problems.append((payload, sorted(producers)))
    return problems


def check_reads(catalogue: Any, plan: Any, name: str, reads_file: "str | Path") -> None:
    """Raise :class:`UndeclaredDependencyError` when ``name`` read a payload of a calibration it does not
    depend on (one message listing every such payload); nothing when no record exists."""
    names = read_names(reads_file)
    if names is None:
        return
    problems = undeclared_reads(catalogue, plan, name, names)
    if problems:
        where = catalogue[name].where
        listed = "; ".join(f"{payload} (produced by {', '.join(producers)})" for payload, producers in problems)
        missing = sorted({p for _, producers in problems for p in producers})
        raise UndeclaredDependencyError(
            f"{name} read payloads of this bucket from calibrations it does not depend on: {listed}; its result "
            f"would depend on which finished first. Add {', '.join(missing)} to depends_on ({where}) or stop "
            f"reading them")


__all__ = ["READS_FILE", "check_reads", "read_names", "undeclared_reads", "write_reads"]
