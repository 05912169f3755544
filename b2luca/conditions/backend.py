"""Conditions backends: where the bucket's prompt global tag lives and how payloads get into it.

Two implementations of one interface (:class:`ConditionsBackend`):

- :class:`LocalBackend` (``conditions.backend: local``, the default): the prompt global tag is the local
  database directory ``<conditions.directory>/<prompt_global_tag>``; its state is in ``globaltag.json``.
- :class:`CentralBackend` (``conditions.backend: central``): the prompt global tag is a tag of the central
  conditions database, reached through :class:`~b2luca.conditions.rest.CondDBClient`.  The local prompt
  tag directory stays the bucket's working copy (the calibrations' database chain reads it); what is
  uploaded is what enters it: the local calibrations' copies and the validated payloads that pass the
  update/veto rule.

Both enforce the same state machine (:data:`~b2luca.conditions.globaltag.ALLOWED_TRANSITIONS`): payloads
only go into an OPEN tag, and a forbidden transition raises :class:`~b2luca.errors.GlobalTagError`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from ..enums import ConditionsBackend as BackendKind
from ..errors import ConditionsConfigError, ConditionsDBError, GlobalTagError
from .database import PayloadEntry
from .globaltag import ALLOWED_TRANSITIONS, GlobalTag, GlobalTagState
from .rest import CondDBClient

if TYPE_CHECKING:
    from ..config import BucketConfig

log = logging.getLogger("b2luca.conditions")


@dataclass(frozen=True)
class UploadRecord:
    """What happened to one payload IoV: ``new_payload`` (stored/uploaded now), ``new_iov`` (IoV created now)."""

    name: str
    iov: str
    checksum: str
    payload_id: str
    new_payload: bool
    new_iov: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConditionsBackend(Protocol):
    """The prompt global tag of one bucket, wherever it lives."""

    kind: str
    tag: str

    def state(self) -> GlobalTagState | None:
        """The tag's state, None when the tag does not exist yet."""

    def ensure(self) -> GlobalTagState:
        """Create the tag OPEN when missing; return its state."""

    def transition(self, target: GlobalTagState) -> None:
        """Move the tag to ``target``; GlobalTagError if the state machine forbids it."""

    def upload(self, entries: Sequence[PayloadEntry]) -> list[UploadRecord]:
        """Put payload files (with their IoVs) into the tag, idempotently; the tag must be OPEN."""


def file_md5(path: Path) -> str:
    """md5 of a payload file, as the conditions DB keeps it."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_transition(tag: str, current: GlobalTagState, target: GlobalTagState) -> None:
    if target not in ALLOWED_TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[current])) or "none"
        raise GlobalTagError(f"global tag {tag}: {current.value} -> {target.value} is not allowed "
                             f"(from {current.value}: {allowed})")


class LocalBackend:
    """The prompt global tag as a local database directory."""

    kind = "local"

    def __init__(self, root: Path, tag: str) -> None:
        self.root = Path(root)
        self.tag = tag

    def _tag(self) -> GlobalTag:
        return GlobalTag(self.root, self.tag)

    def state(self) -> GlobalTagState | None:
        tag = self._tag()
        return tag.state if tag.exists() else None

    def ensure(self) -> GlobalTagState:
        return GlobalTag.create(self.root, self.tag).state

    def transition(self, target: GlobalTagState) -> None:
        GlobalTag.open(self.root, self.tag).transition(target)

    def upload(self, entries: Sequence[PayloadEntry]) -> list[UploadRecord]:
        """Store entries of other databases into the tag; entries already in it are only confirmed."""
        tag = GlobalTag.open(self.root, self.tag)
        records = []
        for entry in entries:
            if entry.path.parent.resolve() == tag.path.resolve():
                stored, new = entry, False
            else:
                before = tag.lookup(entry.name, entry.iov.first)
                stored = tag.store(entry.name, tag.db.read(entry), entry.iov)
                new = before is None or before.revision != stored.revision
            records.append(UploadRecord(stored.name, str(stored.iov), file_md5(stored.path), str(stored.revision),
                                        new_payload=new, new_iov=new))
        return records


class CentralBackend:
    """The prompt global tag in the central conditions database (REST v2)."""

    kind = "central"

    def __init__(self, client: CondDBClient, tag: str, description: str = "") -> None:
        self.client = client
        self.tag = tag
        self.description = description or f"b2luca prompt global tag {tag}"

    def state(self) -> GlobalTagState | None:
        info = self.client.global_tag(self.tag)
        return None if info is None else GlobalTagState(info["globalTagStatus"])

    def ensure(self) -> GlobalTagState:
        info = self.client.global_tag(self.tag)
        if info is None:
            # A lost answer to this POST is harmless: the next run finds the tag by name.
            self.client.create_global_tag(self.tag, self.description)
            info = self.client.global_tag(self.tag)
            if info is None:
                raise GlobalTagError(f"global tag {self.tag}: created on the conditions DB but not found afterwards")
        return GlobalTagState(info["globalTagStatus"])

    def transition(self, target: GlobalTagState) -> None:
        current = self.state()
        if current is None:
            raise GlobalTagError(f"global tag {self.tag} does not exist on the conditions DB")
        target = GlobalTagState(target)
        _check_transition(self.tag, current, target)
        try:
            self.client.set_state(self.tag, target.value)
        except ConditionsDBError:
            # The answer may have been lost after the server changed the state (a retried PUT is then refused):
            # what counts is the state now.
            if self.state() is not target:
                raise

    def upload(self, entries: Sequence[PayloadEntry]) -> list[UploadRecord]:
        """checkPayloads by md5, upload what is missing, list the tag's IoVs, create what is missing.

        Every write is preceded by a read of what exists, so a run killed between any two requests and
        run again leaves exactly one payload and one IoV per (name, IoV, checksum).
        """
        if not entries:
            return []
        info = self.client.global_tag(self.tag)
        if info is None:
            raise GlobalTagError(f"global tag {self.tag} does not exist on the conditions DB")
        state = GlobalTagState(info["globalTagStatus"])
        if state is not GlobalTagState.OPEN:
            raise GlobalTagError(f"global tag {self.tag} is {state.value}: only an OPEN global tag accepts payloads")
        sums = [(entry, file_md5(entry.path)) for entry in entries]
        existing = self.client.check_payloads({(e.name, s) for e, s in sums})
        ids: dict[tuple[str, str], int] = {}
        new_payloads: set[tuple[str, str]] = set()
        for entry, checksum in sums:
            key = (entry.name, checksum)
            if key in existing or key in ids:
                ids.setdefault(key, existing.get(key, 0))
                continue
            ids[key] = self.client.upload_payload(entry.name, entry.path, checksum)
            new_payloads.add(key)
        present = {(iov["payloadId"], iov["iov"]) for iov in self.client.global_tag_payloads(self.tag)}
        records = []
        for entry, checksum in sums:
            payload_id = ids[(entry.name, checksum)]
            new_iov = (payload_id, entry.iov) not in present
            if new_iov:
                self.client.create_iov(int(info["globalTagId"]), payload_id, entry.iov)
                present.add((payload_id, entry.iov))
            records.append(UploadRecord(entry.name, str(entry.iov), checksum, str(payload_id),
                                        new_payload=(entry.name, checksum) in new_payloads, new_iov=new_iov))
        log.info("global tag %s: %d payload(s) uploaded, %d IoV(s) created", self.tag,
                 sum(r.new_payload for r in records), sum(r.new_iov for r in records))
        return records


def backend_for(cfg: BucketConfig) -> ConditionsBackend:
    """The backend of a bucket config (``conditions.backend``)."""
    cond = cfg.conditions
    if cond.backend == BackendKind.LOCAL:
        return LocalBackend(cond.directory, cond.prompt_global_tag)
    if cond.backend == BackendKind.CENTRAL:
        if cond.central is None:
            raise ConditionsConfigError(f"{cfg.path}: conditions.central: is required when conditions.backend "
                                        "is 'central'")
        return CentralBackend(CondDBClient.from_config(cond.central), cond.prompt_global_tag,
                              description=f"b2luca prompt calibration of bucket {cfg.name}")
    raise ConditionsConfigError(f"{cfg.path}: conditions.backend: must be 'local' or 'central', got {cond.backend!r}")


__all__ = ["CentralBackend", "ConditionsBackend", "LocalBackend", "UploadRecord", "backend_for", "file_md5"]
