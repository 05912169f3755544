"""From a calibration's output database to the prompt global tag: update/veto rule, store, upload.

:func:`promote_payloads` is what a CalibrationTask calls after its validation passed:

1. the last line of each payload in the runner's output database is the result;
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


def promote_payloads(cfg: Any, calibration: str, source: LocalDatabase, prompt: GlobalTag,
                     backend: ConditionsBackend | None = None) -> PromoteResult:
    """Judge, store and upload the payloads of ``calibration`` found in its output database ``source``."""
    latest: dict[str, PayloadEntry] = {}
    for entry in source.entries():  # the last line of each payload is the result
        latest[entry.name] = entry
    rule = rule_for(cfg.calibrations.upload, calibration)
    chain = in_force_chain(cfg)
    first_run = ExpRun(cfg.bucket.experiment, cfg.bucket.first_run)
    data = {name: source.read(entry) for name, entry in latest.items()}
    decisions = []
    for name, new in data.items():
        old = chain.read_or_none(name, first_run)
        same = old is not None and payload_checksum(old) == payload_checksum(new)
        decisions.append(decide(name, new, old, rule, same_content=same))
    result = PromoteResult(rule.describe(), decisions)
    if result.vetoed:
        return result
    kept = [d.name for d in decisions if d.upload]
    before = {name: prompt.lookup(name, cfg.prompt_iov.first) for name in kept}
    stored = [prompt.store(name, data[name], cfg.prompt_iov) for name in kept]
    result.payloads = [{"name": e.name, "revision": e.revision, "iov": str(e.iov), "new": _is_new(before[e.name], e)}
                       for e in stored]
    backend = backend if backend is not None else backend_for(cfg)
    result.uploads = [r.to_dict() for r in backend.upload(stored)]
    return result


__all__ = ["PromoteResult", "in_force_chain", "promote_payloads"]
