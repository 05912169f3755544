"""The on-disk outbox: an append-only event log plus one delivery cursor per transport.

Layout under ``<work_dir>/report/``::

    events.jsonl            one ReportEvent per line, seq = 1, 2, 3, ... (appended under .events.lock)
    outbox_id               random id of this event log (distinguishes reruns with a fresh outbox)
    cursors/<transport>.json  {"seq": last delivered seq, ...transport state}, replaced atomically
    .deliver-<transport>.lock  held while a process delivers to that transport

Events are appended by several luigi worker *processes* at once, so every append takes an
``fcntl.flock``.  Delivery to a transport happens under that transport's own lock, in seq order;
the cursor is advanced (atomically) after each delivered event, so an event is delivered exactly
once even across crashes (transports make their side effects idempotent for the one event that may
have been in flight).  A failed delivery stops, keeps the rest pending, records a back-off time and
never raises into the caller.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ._io import atomic_write_json, file_lock, read_json
from .events import ReportEvent
from ..errors import ReportConfigError as ReportConfigError  # re-exported
from ..errors import TransportError

log = logging.getLogger("b2luca.report")

#: Back-off after a failed delivery, before emit() tries again (flush() ignores it unless rate limited).
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 300.0
_HEAD = 64  # bytes of the log's start that identify it (its first event's time) across reads


@dataclass
class DeliveryContext:
    """What a transport sees during one delivery attempt."""

    bucket: str
    outbox_id: str
    events: list[ReportEvent]
    cursor: dict[str, Any]
    commit: Callable[[], None] = field(repr=False)

    @property
    def delivered_seq(self) -> int:
        """Last delivered seq."""
        return int(self.cursor.get("seq", 0))

    @property
    def pending(self) -> list[ReportEvent]:
        """Events not yet delivered, in order."""
        s = self.delivered_seq
        return [e for e in self.events if (e.seq or 0) > s]

    def mark_delivered(self, ev: ReportEvent) -> None:
        """Advance the cursor past ``ev`` and persist it atomically."""
        self.cursor["seq"] = int(ev.seq or 0)
        self.commit()


def _due(transport: "Transport", cursor: dict[str, Any], force: bool) -> bool:
    """Whether ``transport`` delivers now: a transport with ``min_interval_s`` (the local files during a
    bucket run) delivers at most that often unless forced (a flush); what waits is delivered by the next
    due emit, the driver's tick or the final flush."""
    interval = float(getattr(transport, "min_interval_s", 0.0))
    return force or interval <= 0 or time.time() - float(cursor.get("attempted", 0.0)) >= interval


class Transport(Protocol):
    """A report transport (local Markdown files, GitLab).

    A transport may have ``min_interval_s``: then it is delivered to at most that often, except by a flush.
    """

    name: str

    def deliver(self, ctx: DeliveryContext) -> None:
        """Deliver ``ctx.pending`` in order, calling ``ctx.mark_delivered`` after each; raise TransportError."""

    def pending_extra(self, cursor: dict[str, Any]) -> int:
        """Work left besides undelivered events (e.g. bodies still to refresh)."""


@dataclass
class _ParsedLog:
    """What one process has parsed of the event log so far."""

    inode: int
    head: bytes  # the log's first bytes (its first event's time): a new log with a reused inode differs
    offset: int  # end of the last complete line parsed
    lines: int
    events: list[ReportEvent]


class Outbox:
    """Event log + delivery cursors under ``report_dir``."""

    def __init__(self, report_dir: Path) -> None:
        self.dir = Path(report_dir)
        self.events_path = self.dir / "events.jsonl"
        self._lock_path = self.dir / ".events.lock"
        self._id_path = self.dir / "outbox_id"
        self._cursor_dir = self.dir / "cursors"
        #: events already parsed by this process: (inode, head bytes, end offset of the last complete
        #: line, events); the log is append-only, so a later read parses only what was appended since
        self._cache: _ParsedLog | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None  # a pickled copy reads the log afresh
        return state

    # ------------------------------------------------------------------ append / read
    def append(self, ev: ReportEvent) -> ReportEvent:
        """Give ``ev`` the next seq and append it durably (process-safe)."""
        return self.append_many([ev])[0]

    def append_many(self, events: "list[ReportEvent]") -> "list[ReportEvent]":
        """Give ``events`` the next seqs, in order, and append them durably in one write and one fsync
        (process-safe: no other event comes between them)."""
        if not events:
            return events
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock_path):
            self._ensure_id()
            with open(self.events_path, "a+b") as fh:
                last = self._repair_and_last_seq(fh)
                for offset, ev in enumerate(events, 1):
                    ev.seq = last + offset
                fh.seek(0, os.SEEK_END)
                fh.write("".join(ev.to_json() + "\n" for ev in events).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        return events

    def _ensure_id(self) -> str:
        if not self._id_path.exists():
            tmp = self._id_path.with_suffix(".tmp")
            tmp.write_text(uuid.uuid4().hex + "\n")
            os.replace(tmp, self._id_path)
        return self._id_path.read_text().strip()

    @property
    def outbox_id(self) -> str:
        """Random id of this event log (created with the first event)."""
        try:
            return self._id_path.read_text().strip()
        except FileNotFoundError:
            with file_lock(self._lock_path):
                return self._ensure_id()

    def _repair_and_last_seq(self, fh: Any) -> int:
        """Cut a torn last line (crash mid-append) and return the seq of the last complete line."""
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        block = 4096
        pos = size
        buf = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            buf = fh.read(step) + buf
            # need the start of the last complete line
            body = buf[:-1] if buf.endswith(b"\n") else buf
            if b"\n" in body or pos == 0:
                break
            block *= 2
        if not buf.endswith(b"\n"):
            cut = buf.rfind(b"\n")
            new_size = pos + cut + 1 if cut >= 0 else pos if pos else 0
            log.warning("%s: cutting a torn last line (%d bytes)", self.events_path, size - new_size)
            fh.truncate(new_size)
            fh.flush()
            return self._repair_and_last_seq(fh)
        lines = buf[:-1].split(b"\n")
        try:
            return int(ReportEvent.from_json(lines[-1].decode("utf-8")).seq or 0)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{self.events_path}: corrupt last line ({exc})") from exc

    def read_events(self) -> list[ReportEvent]:
        """All complete events in seq order (a torn or corrupt line is skipped with a warning).

        Incremental within a process: only the bytes appended since the previous call are parsed (the
        log is append-only; a replaced or shortened log is read afresh), so a bucket's report costs
        grow with its events, not with their square.
        """
        try:
            fh = open(self.events_path, "rb")
        except FileNotFoundError:
            self._cache = None
            return []
        with fh:
            st = os.fstat(fh.fileno())
            head = fh.read(_HEAD)
            cache = self._cache
            if (cache is not None and cache.inode == st.st_ino and st.st_size >= cache.offset
                    and head[:len(cache.head)] == cache.head):
                # a new list: the driver's progress thread and a task in the same process may read at once
                offset, lines, events = cache.offset, cache.lines, list(cache.events)
            else:
                offset, lines, events = 0, 0, []
            fh.seek(offset)
            raw = fh.read()
        end = raw.rfind(b"\n") + 1  # an incomplete last line is being written right now: not yet
        for line in raw[:end].split(b"\n")[:-1]:
            lines += 1
            try:
                events.append(ReportEvent.from_json(line.decode("utf-8")))
            except Exception as exc:  # noqa: BLE001
                log.warning("%s line %d: skipping unreadable event (%s)", self.events_path, lines, exc)
        self._cache = _ParsedLog(st.st_ino, head, offset + end, lines, events)
        return list(events)

    def last_seq(self) -> int:
        """seq of the last appended event (0 if none)."""
        if not self.events_path.exists():
            return 0
        with file_lock(self._lock_path):
            with open(self.events_path, "a+b") as fh:
                return self._repair_and_last_seq(fh)

    # ------------------------------------------------------------------ cursors
    def cursor_path(self, transport: str) -> Path:
        """Cursor file of ``transport``."""
        return self._cursor_dir / f"{transport}.json"

    def load_cursor(self, transport: str) -> dict[str, Any]:
        """Cursor of ``transport`` ({"seq": 0} when nothing was delivered)."""
        c = read_json(self.cursor_path(transport), {})
        c.setdefault("seq", 0)
        return c

    def pending_count(self, transport: Transport) -> int:
        """Undelivered events for ``transport`` plus its extra pending work."""
        c = self.load_cursor(transport.name)
        n = sum(1 for e in self.read_events() if (e.seq or 0) > int(c["seq"]))
        return n + int(transport.pending_extra(c))

    # ------------------------------------------------------------------ delivery
    def deliver(
        self, transport: Transport, bucket: str, blocking: bool = False, force: bool = False,
        max_wait: float = 60.0,
    ) -> int:
        """Deliver pending events to ``transport``; never raises for transport trouble.

        ``blocking``: wait for another process's delivery to finish instead of leaving the work to it.
        ``force``: ignore the back-off recorded after a failure (a Retry-After is still honoured, waiting
        at most ``max_wait`` seconds).  Returns the pending count afterwards.
        """
        lock = self.dir / f".deliver-{transport.name}.lock"
        while True:
            with file_lock(lock, blocking=blocking) as got:
                if not got:  # another process delivers; it re-checks for our event after releasing
                    return self.pending_count(transport)
                cursor = self.load_cursor(transport.name)
                if not self._may_try(cursor, force, max_wait) or not _due(transport, cursor, force):
                    break
                if getattr(transport, "min_interval_s", 0.0) > 0:
                    cursor["attempted"] = time.time()  # saved with the cursor by the next mark_delivered
                cpath = self.cursor_path(transport.name)
                ctx = DeliveryContext(
                    bucket=bucket, outbox_id=self.outbox_id, events=self.read_events(), cursor=cursor,
                    commit=functools.partial(atomic_write_json, cpath, cursor),
                )
                try:
                    transport.deliver(ctx)
                except Exception as exc:  # noqa: BLE001 - never raise into the task
                    self._record_failure(transport, cursor, exc)
                    break
                if cursor.pop("not_before", None) is not None or cursor.pop("failures", None) is not None:
                    cursor.pop("rate_limited", None)
                    atomic_write_json(cpath, cursor)
                delivered = int(cursor["seq"])
            if self.last_seq() <= delivered:
                break
        return self.pending_count(transport)

    def _may_try(self, cursor: dict[str, Any], force: bool, max_wait: float) -> bool:
        nb = float(cursor.get("not_before", 0.0))
        wait = nb - time.time()
        if wait <= 0:
            return True
        if not force:
            return False
        if not cursor.get("rate_limited"):
            return True
        if wait > max_wait:
            log.warning("report delivery: server asked to wait %.0f s (rate limit); not flushing now", wait)
            return False
        time.sleep(wait)
        return True

    def _record_failure(self, transport: Transport, cursor: dict[str, Any], exc: Exception) -> None:
        failures = int(cursor.get("failures", 0)) + 1
        retry_after = getattr(exc, "retry_after", None)
        backoff = float(retry_after) if retry_after is not None else min(
            BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1)
        )
        cursor["failures"] = failures
        cursor["not_before"] = time.time() + backoff
        cursor["rate_limited"] = bool(getattr(exc, "rate_limited", False))
        try:
            atomic_write_json(self.cursor_path(transport.name), cursor)
        except OSError as wexc:
            log.error("report: cannot write delivery cursor %s: %s", self.cursor_path(transport.name), wexc)
        level = logging.WARNING if isinstance(exc, TransportError) else logging.ERROR
        log.log(
            level, "report delivery to %s failed (%s: %s); events stay in the outbox %s, next try in %.0f s",
            transport.name, type(exc).__name__, exc, self.events_path, backoff,
        )
