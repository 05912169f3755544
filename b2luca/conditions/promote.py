"""From a calibration's output database to the prompt global tag: update/veto rule, store, upload.

:func:`promote_payloads` is what a CalibrationTask calls after its validation passed:

1. the last line of each payload in the runner's output database is the result (with a time-dependent result,
   one IoV per interval, the lines of the earlier intervals too: :func:`result_entries`);
2. each is judged by the calibration's update/veto rule (:mod:`.rule`) against the constants in force;
3. if any payload is vetoed, nothing of the calibration goes anywhere;
4. otherwise the payloads to upload are stored in the local prompt tag (the bucket's working copy, read by
   the database chain of later calibrations; with the local backend it *is* the prompt tag) and handed to
   the configured backend (:mod:`.backend`), which uploads them idempotently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..iov import ExpRun
from .backend import ConditionsBackend, backend_for
from .database import DatabaseChain, LocalDatabase, PayloadEntry
from .globaltag import GlobalTag
from .payload import payload_checksum
from .rule import VETOED, Decision, decide, rule_for


@dataclass
class PromoteResult:
    """What happened to a calibration's payloads."""

    rule: str
    decisions: list[Decision]
    payloads: list[dict[str, Any]] = field(default_factory=list)  # what is in the prompt tag now
    uploads: list[dict[str, Any]] = field(default_factory=list)  # backend records

    @property
    def vetoed(self) -> bool:
        return any(d.outcome == VETOED for d in self.decisions)

    @property
    def veto_reason(self) -> str:
        return "; ".join(f"{d.name}: {d.reason}" for d in self.decisions if d.outcome == VETOED)

    def event(self, backend: str, tag: str) -> dict[str, Any]:
        """The data of the ``upload`` report event."""
        return {"backend": backend, "global_tag": tag, "rule": self.rule, "vetoed": self.vetoed,
                "decisions": [d.to_dict() for d in self.decisions], "uploads": self.uploads}


def _is_new(before: PayloadEntry | None, stored: PayloadEntry) -> bool:
    """Whether storing gave the prompt tag a new revision (not the one it already held)."""
    return before is None or before.revision != stored.revision


def in_force_chain(cfg: Any) -> DatabaseChain:
    """The constants in force: the configured database chain, without the bucket's prompt tag."""
    root = cfg.conditions.directory
    return DatabaseChain([LocalDatabase(root / name) for name in cfg.conditions.database_chain])


def result_entries(entries: list[PayloadEntry], first: ExpRun) -> dict[str, list[PayloadEntry]]:
    """The result of each payload in a calibration's output database: its last line, and, when that line's IoV
    starts after the bucket's first run ``first`` (a time-dependent result, one IoV per interval), the
    preceding lines of that payload whose IoVs end right before it, back to the interval holding ``first``."""
    by_name: dict[str, list[PayloadEntry]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    out = {}
    for name, lines in by_name.items():
        chain = [lines[-1]]
        for entry in reversed(lines[:-1]):
            head = chain[0].iov
            if head.first <= first:
                break
            iov = entry.iov
            if (iov.exp_high, iov.run_high + 1) == (head.exp_low, head.run_low) and iov.first < head.first:
                chain.insert(0, entry)
        out[name] = chain if chain[0].iov.first <= first else [lines[-1]]
    return out


def promote_payloads(cfg: Any, calibration: str, source: LocalDatabase, prompt: GlobalTag,
                     backend: ConditionsBackend | None = None) -> PromoteResult:
    """Judge, store and upload the payloads of ``calibration`` found in its output database ``source``."""
    latest = result_entries(source.entries(), ExpRun(cfg.bucket.experiment, cfg.bucket.first_run))
    rule = rule_for(cfg.calibrations.upload, calibration)
    chain = in_force_chain(cfg)
    decisions, data = [], {}
    for name, entries in latest.items():
        for entry in entries:
            new = source.read(entry)
            # a time-dependent result is judged per interval against what is in force at its first run
            old = chain.read_or_none(name, entry.iov.first if len(entries) > 1 else cfg.prompt_iov.first)
            same = old is not None and payload_checksum(old) == payload_checksum(new)
            decisions.append(decide(name, new, old, rule, same_content=same))
            data[(name, entry.iov)] = new
    result = PromoteResult(rule.describe(), decisions)
    if result.vetoed:
        return result
    keys = [key for d, key in zip(decisions, data) if d.upload]
    # one IoV: open-ended from the bucket's first run (the prompt IoV); several: each interval's own IoV
    iovs = {key: key[1] if len(latest[key[0]]) > 1 else cfg.prompt_iov for key in keys}
    before = {key: prompt.lookup(key[0], iovs[key].first) for key in keys}
    stored = [prompt.store(key[0], data[key], iovs[key]) for key in keys]
    result.payloads = [{"name": e.name, "revision": e.revision, "iov": str(e.iov), "new": _is_new(before[k], e)}
                       for k, e in zip(keys, stored)]
    backend = backend if backend is not None else backend_for(cfg)
    result.uploads = [r.to_dict() for r in backend.upload(stored)]
    return result


__all__ = ["PromoteResult", "in_force_chain", "promote_payloads", "result_entries"]
