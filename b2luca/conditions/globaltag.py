"""Global tags: a named local database plus a state, with the Belle II conditions-DB transitions."""

from __future__ import annotations

import enum
import json
import os
import re
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..atomic import write_json_atomic
from ..iov import ExpRun, IoV
from .database import DatabaseChain, LocalDatabase, PayloadEntry
from .database import DatabaseError as DatabaseError  # re-exported
from ..errors import GlobalTagError
from ..paths import NAME_PATTERN, under

STATE_FILE = "globaltag.json"
_TAG_RE = re.compile(NAME_PATTERN)


class GlobalTagState(str, enum.Enum):
    """States of a global tag in the Belle II conditions database."""

    OPEN = "OPEN"
    RUNNING = "RUNNING"
    TESTING = "TESTING"
    VALIDATED = "VALIDATED"
    PUBLISHED = "PUBLISHED"
    INVALID = "INVALID"


ALLOWED_TRANSITIONS: dict[GlobalTagState, frozenset[GlobalTagState]] = {
    GlobalTagState.OPEN: frozenset({GlobalTagState.TESTING, GlobalTagState.RUNNING}),
    GlobalTagState.TESTING: frozenset({GlobalTagState.VALIDATED, GlobalTagState.OPEN}),
    GlobalTagState.VALIDATED: frozenset({GlobalTagState.PUBLISHED, GlobalTagState.OPEN}),
    GlobalTagState.PUBLISHED: frozenset({GlobalTagState.INVALID}),
    GlobalTagState.RUNNING: frozenset(),
    GlobalTagState.INVALID: frozenset(),
}


class GlobalTag:
    """A named local database under ``root/<name>`` with a state kept in ``globaltag.json``."""

    def __init__(self, root: "str | os.PathLike[str]", name: str) -> None:
        if not _TAG_RE.match(name):
            raise GlobalTagError(f"global tag name {name!r}: only letters, digits and _ . - are allowed "
                                 "(not starting with . or -)")
        self.root = Path(root)
        self.name = name
        self.db = LocalDatabase(under(self.root, name, what="global tag"))

    def __repr__(self) -> str:
        return f"GlobalTag({self.name!r}, state={self.state.value})"

    @property
    def path(self) -> Path:
        return self.db.path

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @classmethod
    def create(cls, root: "str | os.PathLike[str]", name: str, exist_ok: bool = True) -> "GlobalTag":
        """Create an OPEN global tag (or return the existing one when ``exist_ok``)."""
        tag = cls(root, name)
        if tag.exists():
            if not exist_ok:
                raise GlobalTagError(f"global tag {name} already exists under {root}")
            return tag
        tag.db.create()
        tag._write_state(GlobalTagState.OPEN, history=[])
        return tag

    @classmethod
    def open(cls, root: "str | os.PathLike[str]", name: str) -> "GlobalTag":
        """Open an existing global tag; a clear error when it does not exist."""
        tag = cls(root, name)
        if not tag.exists():
            raise GlobalTagError(f"global tag {name} does not exist under {root}")
        return tag

    def exists(self) -> bool:
        return self.state_file.is_file() and self.db.exists()

    @property
    def state(self) -> GlobalTagState:
        if not self.state_file.is_file():
            raise GlobalTagError(f"global tag {self.name}: {self.state_file} is missing")
        return GlobalTagState(json.loads(self.state_file.read_text())["state"])

    def history(self) -> list[dict]:
        """Past transitions: ``[{"from", "to", "time"}]``."""
        return list(json.loads(self.state_file.read_text()).get("history", []))

    def transition(self, new_state: "GlobalTagState | str") -> None:
        """Move to ``new_state`` if the conditions DB allows it, else raise GlobalTagError."""
        target = GlobalTagState(new_state)
        with self.db.locked():
            current = self.state
            if target not in ALLOWED_TRANSITIONS[current]:
                allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[current])) or "none"
                raise GlobalTagError(f"global tag {self.name}: {current.value} -> {target.value} is not allowed "
                                     f"(from {current.value}: {allowed})")
            history = self.history() + [{"from": current.value, "to": target.value, "time": time.time()}]
            self._write_state(target, history)

    def store(self, name: str, data: Mapping[str, "np.typing.ArrayLike"], iov: IoV) -> PayloadEntry:
        """Store a payload; only an OPEN global tag accepts payloads."""
        self._require_open()
        return self.db.store(name, data, iov)

    def lookup(self, name: str, exprun: ExpRun) -> PayloadEntry | None:
        return self.db.lookup(name, exprun)

    def read(self, name: str, exprun: ExpRun) -> dict[str, np.ndarray]:
        return self.db.read(name, exprun)

    def _require_open(self) -> None:
        state = self.state
        if state is not GlobalTagState.OPEN:
            raise GlobalTagError(f"global tag {self.name} is {state.value}: only an OPEN global tag accepts payloads")

    def _write_state(self, state: GlobalTagState, history: list[dict]) -> None:
        write_json_atomic(self.state_file, {"name": self.name, "state": state.value, "history": history}, indent=1)


def copy_payloads(source: "GlobalTag | LocalDatabase", target: GlobalTag, names: Sequence[str], iov: IoV,
                  source_run: ExpRun | None = None) -> list[PayloadEntry]:
    """Copy payloads into ``target`` with their run range set to ``iov`` (what a local calibration does).

    The source revision taken is the one valid for ``source_run`` (default: the first run of ``iov``);
    a missing payload is an error naming the source and the payload.
    """
    source_db = source.db if isinstance(source, GlobalTag) else source
    label = source.name if isinstance(source, GlobalTag) else str(source.path)
    run = source_run or iov.first
    copied = []
    for name in names:
        entry = source_db.lookup(name, run)
        if entry is None:
            raise GlobalTagError(f"source {label} has no payload {name} valid for run {run}")
        copied.append(target.store(name, source_db.read(entry), iov))
    return copied


def open_chain(root: "str | os.PathLike[str]", names: Sequence[str]) -> DatabaseChain:
    """A database chain of global tags under ``root`` (first match wins); missing tags are an error."""
    return DatabaseChain([GlobalTag.open(root, name).db for name in names])
