"""Declared versus actual payload dependencies of a calibration.

The native runner records every payload a calibration looked up in its database chain
(``payloads_read.json`` beside ``caf_config.json``).  A payload that another calibration of this bucket
produces may only be read when that calibration is guaranteed to have finished first: it is one of
the reader's ``depends_on`` (directly or transitively), or it runs in an earlier stage (raw before
cDST; see below for which raw calibrations that covers).  Anything else is an undeclared dependency: the
reader got whatever happened to be in force when it ran (the nominal constants, a failed calibration's
absence, or the previous bucket run's revision), so its result depends on scheduling.  That is an error, not a warning: the payloads would
otherwise be published, and nobody reads warnings of an automated run.

cDST production (reconstruction) reads a fixed set of payloads, :data:`PRODUCTION_READS` (what
:func:`b2luca.reco.measurements.load_constants` looks up).  It waits only for the raw calibrations that
produce one of them (:func:`production_requirements`); the other raw calibrations (the PXD background GAN
in the demo) run beside it.  So a cDST calibration, which waits for the production, is guaranteed to run
after those raw calibrations (and their dependencies) only: a raw payload of any other raw calibration must
be declared in its ``depends_on`` like a payload of its own stage.  Production itself records its look-ups
too (:func:`check_production_reads`): reading a payload of a raw calibration it does not wait for is the
same error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from .enums import Stage
from .errors import UndeclaredDependencyError
from .reco.measurements import PAYLOAD_NAMES

#: Written by the native runner into the calibration's working directory.
READS_FILE = "payloads_read.json"
#: The payloads cDST production reads (every constant of the reconstruction).
PRODUCTION_READS: tuple[str, ...] = tuple(PAYLOAD_NAMES)


def write_reads(path: "str | Path", lookups: Iterable[dict[str, Any]], *, durable: bool = True) -> None:
    """Write the payload look-ups of a calibration (see :meth:`DatabaseChain.lookups`); ``durable=False``:
    atomic but not fsynced (:func:`~b2luca.atomic.write_bytes_atomic`)."""
    from .atomic import write_json_atomic

    write_json_atomic(Path(path), {"lookups": list(lookups)}, durable=durable)


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


def production_requirements(catalogue: Any, plan: Any) -> list[str]:
    """The raw calibrations cDST production waits for: those producing a payload it reads, in plan order."""
    return [name for name in plan.order if plan.group_of(name)[0] == Stage.RAW
            and set(catalogue[name].settings.produced_payloads) & set(PRODUCTION_READS)]


def _before_production(catalogue: Any, plan: Any) -> set[str]:
    """Raw calibrations guaranteed to have finished when production starts (its requirements, transitively)."""
    names = production_requirements(catalogue, plan)
    return {dep for name in names for dep in (name, *plan.dependencies(name))}


def undeclared_reads(catalogue: Any, plan: Any, name: str, read: Iterable[str]) -> list[tuple[str, list[str]]]:
    """``[(payload, [producers])]``: payloads ``name`` read that calibrations of this bucket produce which
    are neither ``name`` itself, nor what it depends on (transitively), nor, for a cDST calibration, a raw
    calibration that cDST production waits for."""
    allowed = {name, *plan.dependencies(name)}
    if plan.group_of(name)[0] == Stage.CDST:
        allowed |= _before_production(catalogue, plan)
    return _producers_outside(catalogue, allowed, read)


def _producers_outside(catalogue: Any, allowed: set[str], read: Iterable[str]) -> list[tuple[str, list[str]]]:
    problems = []
    for payload in read:
        producers = [info.name for info in catalogue
                     if payload in info.settings.produced_payloads and info.name not in allowed]
        if producers:
            problems.append((payload, sorted(producers)))
    return problems


def check_production_reads(catalogue: Any, plan: Any, read: Iterable[str], task: str) -> None:
    """Raise :class:`UndeclaredDependencyError` when cDST production (task ``task``) read a payload of a raw
    calibration it does not wait for (payloads of cDST calibrations are allowed: a repeated production
    updates the branches that depend on them)."""
    allowed = _before_production(catalogue, plan) | {name for name in plan.order
                                                     if plan.group_of(name)[0] != Stage.RAW}
    problems = _producers_outside(catalogue, allowed, read)
    if problems:
        listed = "; ".join(f"{payload} (produced by {', '.join(producers)})" for payload, producers in problems)
        raise UndeclaredDependencyError(
            f"{task} read payloads of raw calibrations it does not wait for: {listed}; production waits only "
            f"for the producers of b2luca.payload_deps.PRODUCTION_READS ({', '.join(PRODUCTION_READS)}), so "
            f"its result would depend on which finished first")


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


__all__ = ["PRODUCTION_READS", "READS_FILE", "check_production_reads", "check_reads", "production_requirements",
           "read_names", "undeclared_reads", "write_reads"]
