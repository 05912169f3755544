"""Reporting layer: the DAG emits events, transports deliver them (DESIGN §7).

The task graph only calls :func:`open_reporter` and :meth:`Reporter.emit`; it never imports python-gitlab
(the GitLab transport is imported lazily, only when the configuration asks for it).

Transports: the **local** transport (Markdown under ``<work_dir>/report/``) is always written — GitLab runs
keep the same text locally, readable without network.  With ``transport: gitlab`` the events are *also*
delivered to GitLab.  Each transport has its own delivery cursor in the one outbox
(``<work_dir>/report/events.jsonl``), so a GitLab outage never holds back the local files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import GitLabConfig, ReportConfig
from ..enums import Transport as TransportKind
from .events import EVENT_KINDS, STEPS, EventError, ReportEvent
from ._secrets import has_secrets, redact
from .local import LocalTransport
from .outbox import Outbox, ReportConfigError, Transport, TransportError

log = logging.getLogger("b2luca.report")

__all__ = [
    "EVENT_KINDS", "STEPS", "EventError", "GitLabSettings", "ReportConfigError", "ReportEvent", "ReportSettings",
    "Reporter", "SignOff", "TransportError", "flush", "local_issue_path", "open_reporter", "read_signoffs",
    "report_dir",
]


# The report layer is configured by the bucket YAML's typed ``report`` section; the old names stay usable.
ReportSettings = ReportConfig
GitLabSettings = GitLabConfig


@dataclass(frozen=True)
class SignOff:
    """Expert sign-off state of one calibration issue."""

    payloads_reviewed: bool
    checklist: bool  # "- [x] sign-off" ticked
    label: bool  # carries the ``signed-off`` label
    url: str | None

    @property
    def signed_off(self) -> bool:
        """Checklist sign-off ticked or ``signed-off`` label present."""
        return self.checklist or self.label

    def __str__(self) -> str:
        how = [w for w, ok in (("checklist", self.checklist), ("label", self.label)) if ok]
        state = f"signed off ({' + '.join(how)})" if how else "not signed off"
        if self.payloads_reviewed:
            state += ", payloads reviewed"
        return state + (f" — {self.url}" if self.url else "")


def local_issue_path(work_dir: Path, name: str) -> Path:
    """The local Markdown issue of calibration ``name`` (task names are made file-system safe)."""
    return LocalTransport(report_dir(work_dir)).issue_path(name)


def report_dir(work_dir: Path) -> Path:
    """``<work_dir>/report``."""
    return Path(work_dir) / "report"


def _gitlab_transport(report_cfg: ReportConfig, bucket: str) -> Transport:
    from .gitlab import GitLabTransport

    gcfg = report_cfg.gitlab
    if gcfg is None:
        raise ReportConfigError("report.transport is 'gitlab' but report.gitlab is not configured")
    return GitLabTransport(gcfg, bucket)


def _transports(report_cfg: ReportConfig | None, work_dir: Path, bucket: str, strict: bool = True,
                local_interval_s: float = 0.0) -> list[Transport]:
    kind = report_cfg.transport if report_cfg is not None else TransportKind.LOCAL
    out: list[Transport] = [LocalTransport(report_dir(work_dir), min_interval_s=local_interval_s)]
    if kind == TransportKind.GITLAB:
        assert report_cfg is not None
        try:
            out.append(_gitlab_transport(report_cfg, bucket))
        except ReportConfigError as exc:
            if strict:
                raise
            log.warning("report: GitLab delivery disabled in this process (%s); events wait in the outbox", exc)
    elif kind != TransportKind.LOCAL:
        raise ReportConfigError(f"report.transport must be 'local' or 'gitlab', not {kind!r}")
    return out


class Reporter:
    """Emits report events for one bucket run; picklable, usable from several processes at once."""

    def __init__(self, report_cfg: ReportConfig | None, work_dir: Path, bucket: str,
                 transports: list[Transport] | None = None, deliver_on_emit: bool = True,
                 strict: bool = True, local_interval_s: float = 0.0) -> None:
        """``local_interval_s`` > 0: emit() re-renders the local files at most that often (see
        :func:`open_reporter`)."""
        self.report_cfg = report_cfg
        #: deliver to remote transports (GitLab) inside emit(); if False only the local files are
        #: updated by emit() and the driver calls deliver()/flush() (e.g. after each finished task)
        self.deliver_on_emit = deliver_on_emit
        self.work_dir = Path(work_dir)
        self.bucket = bucket
        self.outbox = Outbox(report_dir(self.work_dir))
        self.transports = (transports if transports is not None
                           else _transports(report_cfg, self.work_dir, bucket, strict=strict,
                                            local_interval_s=local_interval_s))

    def emit(self, kind: str, task: str | None = None, **data: Any) -> None:
        """Record one event and try to deliver it.

        Raises :class:`EventError` for a malformed event (a programming error); never raises for
        disk or transport trouble (logged; the event waits in the outbox).
        """
        self.emit_many([self.event(kind, task, **data)])

    def event(self, kind: str, task: str | None = None, **data: Any) -> ReportEvent:
        """A checked event of this bucket, stamped now, for :meth:`emit_many` (raises :class:`EventError` for
        a malformed one; a secret in it is redacted)."""
        ev = ReportEvent(kind=kind, bucket=self.bucket, task=task, data=data, time=time.time())
        ev.validate()
        line = ev.to_json()  # raises EventError if not JSON-serialisable
        if has_secrets() and redact(line) != line:  # e.g. a log tail that printed the environment
            ev = ReportEvent.from_json(redact(line))
        return ev

    def emit_many(self, events: list[ReportEvent]) -> None:
        """Record events made by :meth:`event` in one durable append (consecutive seqs, one fsync), then try
        to deliver them; like :meth:`emit`, never raises for disk or transport trouble."""
        if not events:
            return
        try:
            self.outbox.append_many(events)
        except (OSError, ValueError) as exc:  # disk full, corrupt log ...: never fail the task
            log.error("report: cannot append event(s) %s to %s: %s",
                      ", ".join(f"{ev.kind}/{ev.task}" for ev in events), self.outbox.events_path, exc)
            return
        self._deliver(blocking=False, force=False, remote=self.deliver_on_emit)

    def _deliver(self, blocking: bool, force: bool, remote: bool = True) -> int:
        pending = 0
        for t in self.transports:
            if not remote and t.name != "local":
                continue
            try:
                pending += self.outbox.deliver(t, self.bucket, blocking=blocking, force=force)
            except Exception as exc:  # noqa: BLE001 - reporting never fails a calibration
                log.error("report: delivery to %s failed unexpectedly (%s: %s)", t.name, type(exc).__name__, exc)
                pending += 1
        return pending

    def deliver(self) -> int:
        """Try to deliver pending events now, without waiting for another deliverer and respecting the
        back-off after a failure (cheap to call often, e.g. from the driver).  Returns the pending count."""
        return self._deliver(blocking=False, force=False)

    def deliver_local(self) -> None:
        """Bring the local Markdown up to date if it is due (never touches the network: safe to call from
        the driver's progress tick)."""
        self._deliver(blocking=False, force=False, remote=False)

    def flush(self) -> int:
        """Deliver everything pending to every transport now (waits for other deliverers).

        Returns the number of events (plus issue bodies) still pending afterwards: 0 = all delivered.
        """
        return self._deliver(blocking=True, force=True)

    def pending(self) -> int:
        """Pending count without trying to deliver."""
        return sum(self.outbox.pending_count(t) for t in self.transports)


def open_reporter(report_cfg: ReportConfig | None, work_dir: Path, bucket: str, preflight: bool = True,
                  deliver_on_emit: bool = True, local_interval_s: float = 0.0) -> Reporter:
    """Reporter for ``bucket`` writing its outbox under ``<work_dir>/report``.

    With GitLab and ``preflight`` (the driver): a missing token raises; GET the project once; a missing
    project / no access / rejected token raises :class:`ReportConfigError` (a configuration error,
    before anything runs); an unreachable
    server only logs a warning (the outbox keeps the events).  Call it once in the driver; worker
    processes may reuse (fork/pickle) the returned object, or call ``open_reporter(..., preflight=False)``,
    which never raises for configuration trouble (a worker without the token only writes the outbox and
    the local files; the driver's flush delivers).
    ``deliver_on_emit=False``: emit() only writes the outbox and the local files; GitLab delivery then
    happens in :meth:`Reporter.deliver` / :meth:`Reporter.flush`.
    ``local_interval_s`` > 0 (a bucket run): emit() appends every event durably but re-renders the local
    Markdown at most that often; whoever calls :meth:`Reporter.deliver` periodically (the driver's
    progress tick) and the final :meth:`Reporter.flush` bring the files up to date.  Each emit otherwise
    re-renders, which costs a few fsyncs per event: most of a small task's fixed cost (issue 15).
    """
    reporter = Reporter(report_cfg, work_dir, bucket, deliver_on_emit=deliver_on_emit, strict=preflight,
                        local_interval_s=local_interval_s)
    if preflight:
        for t in reporter.transports:
            if hasattr(t, "preflight"):
                try:
                    t.preflight()
                except TransportError as exc:
                    log.warning("GitLab not reachable now (%s); reports wait in %s", exc, reporter.outbox.events_path)
    return reporter


def flush(report_cfg: ReportConfig | None, work_dir: Path, bucket: str) -> int:
    """``b2luca report --flush``: deliver the outbox of ``work_dir``; returns the pending count after."""
    return Reporter(report_cfg, work_dir, bucket).flush()


def read_signoffs(report_cfg: ReportConfig | None, work_dir: Path, bucket: str) -> dict[str, SignOff]:
    """Per calibration: checklist ticked? ``signed-off`` label? issue URL (GitLab, else the local file).

    Raises :class:`TransportError` if GitLab cannot be reached (the caller may fall back to local files
    with ``report_cfg=None``).
    """
    kind = report_cfg.transport if report_cfg is not None else TransportKind.LOCAL
    if report_cfg is not None and kind == TransportKind.GITLAB:
        from .gitlab import read_signoffs as _gl_read

        _gitlab_transport(report_cfg, bucket)  # config check (report.gitlab is set, a token is found)
        assert report_cfg.gitlab is not None
        raw = _gl_read(report_cfg.gitlab, bucket)
    else:
        raw = LocalTransport(report_dir(work_dir)).read_signoffs(bucket)
    return {
        name: SignOff(
            payloads_reviewed=r["checklist"].get("payloads reviewed", False),
            checklist=r["checklist"].get("sign-off", False),
            label="signed-off" in r["labels"],
            url=r["url"],
        )
        for name, r in raw.items()
    }


