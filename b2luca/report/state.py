"""Fold report events into report state (pure functions, no I/O).

The transports never render from a single event: they fold the whole event log into a
:class:`BucketState` and re-render complete bodies from it, so delivering an event twice
produces the same issue text (idempotent bodies).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..enums import REPORT_STATES, TaskStatus
from .events import STEPS, ReportEvent

#: Values of the ``status::`` label / report state of a task.
STATUSES: tuple[str, ...] = REPORT_STATES
#: Plan kinds that get an issue of their own.
ISSUE_KINDS: frozenset[str] = frozenset({"calibration", "local"})


@dataclass
class StepState:
    """State of one CalibrationTask step."""

    state: str = "pending"
    start: float | None = None
    end: float | None = None
    detail: str = ""

    @property
    def duration(self) -> float | None:
        """Seconds between running and done/failed, if both were seen."""
        if self.start is None or self.end is None:
            return None
        return max(0.0, self.end - self.start)


@dataclass
class TaskState:
    """Report state of one task of the plan (calibration or not)."""

    name: str
    stage: str = "?"
    group: Any = "?"
    kind: str = "calibration"
    expert: str | None = None
    description: str = ""
    depends_on: list[str] = field(default_factory=list)
    planned_payloads: list[str] = field(default_factory=list)
    status: str = TaskStatus.PENDING
    attempt: int = 0
    started: float | None = None
    finished: float | None = None
    duration: float | None = None
    steps: dict[str, StepState] = field(default_factory=dict)
    requested_iov: list[int] | None = None
    runs: list[list[int]] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    global_tag: str | None = None
    payloads: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    archive_location: str | None = None
    upload: dict[str, Any] | None = None  # the update/veto decision (``upload`` event)

    @property
    def has_issue(self) -> bool:
        """Whether this task gets an issue of its own (calibrations, local copies)."""
        return self.kind in ISSUE_KINDS

    def reset_attempt(self) -> None:
        """Forget everything of a previous attempt (a task started again)."""
        self.steps = {}
        self.finished = None
        self.duration = None
        self.runs = []
        self.files = {}
        self.global_tag = None
        self.payloads = []
        self.validation = None
        self.failure = None
        self.upload = None


@dataclass
class BucketState:
    """Report state of a whole bucket run."""

    bucket: str
    requested_iov: list[int] | None = None
    settings_commit: str | None = None
    work_dir: str | None = None
    started: float | None = None
    finished: float | None = None
    success: bool | None = None
    counts: dict[str, int] = field(default_factory=dict)
    archives: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, TaskState] = field(default_factory=dict)
    global_tag: dict[str, Any] | None = None  # last ``global_tag`` event: tag, backend, state, reason

    @property
    def published(self) -> bool:
        """The prompt global tag was published (the issues are closed)."""
        return bool(self.global_tag and self.global_tag.get("state") == "PUBLISHED")

    def calibrations(self) -> list[TaskState]:
        """Tasks that get an issue, in plan order."""
        return [t for t in self.tasks.values() if t.has_issue]

    def task(self, name: str) -> TaskState:
        """The state of ``name``, created (unplanned) on first sight."""
        if name not in self.tasks:
            self.tasks[name] = TaskState(name=name)
        return self.tasks[name]

    def live_counts(self) -> dict[str, int]:
        """Number of tasks per status, as of now."""
        counts: dict[str, int] = {}
        for t in self.tasks.values():
            counts[t.status] = counts.get(t.status, 0) + 1
        return counts

    @property
    def verdict(self) -> str:
        """running | success | failed."""
        if self.success is None:
            return TaskStatus.RUNNING if self.started is not None else TaskStatus.PENDING
        return TaskStatus.SUCCESS if self.success else TaskStatus.FAILED


def _apply_plan(state: BucketState, plan: list[dict[str, Any]]) -> None:
    for entry in plan:
        name = str(entry["name"])
        t = state.task(name)
        t.stage = str(entry.get("stage", t.stage))
        t.group = entry.get("group", t.group)
        t.kind = str(entry.get("kind", t.kind))
        expert = entry.get("expert", t.expert)
        t.expert = str(expert).lstrip("@") or None if expert else None
        t.description = str(entry.get("description") or "")
        t.depends_on = list(entry.get("depends_on") or [])
        t.planned_payloads = list(entry.get("produced_payloads") or [])


def apply_event(state: BucketState, ev: ReportEvent) -> None:
    """Apply one event to ``state`` in place."""
    d = ev.data
    k = ev.kind
    if k == "bucket_started":
        state.requested_iov = d.get("requested_iov", state.requested_iov)
        state.settings_commit = d.get("settings_commit", state.settings_commit)
        state.work_dir = d.get("work_dir", state.work_dir)
        state.started = ev.time
        state.finished = None
        state.success = None
        state.counts = {}
        _apply_plan(state, list(d.get("plan") or []))
        return
    if k == "bucket_finished":
        state.finished = ev.time
        state.success = bool(d.get("success"))
        state.counts = {str(a): int(b) for a, b in (d.get("counts") or {}).items()}
        return
    if k == "global_tag":
        state.global_tag = {key: d.get(key) for key in ("tag", "backend", "previous", "state", "reason")}
        state.global_tag["time"] = ev.time
        return
    if k == "archived":
        group = str(d.get("group", ev.task))
        state.archives[group] = str(d.get("location", ""))
        if ev.task in state.tasks:
            state.tasks[ev.task].archive_location = state.archives[group]
        return
    assert ev.task is not None
    t = state.task(ev.task)
    if k == "task_started":
        t.reset_attempt()
        t.attempt += 1
        t.status = TaskStatus.RUNNING
        t.started = ev.time
        if "stage" in d:
            t.stage = str(d["stage"])
        if "group" in d:
            t.group = d["group"]
    elif k == "step":
        s = t.steps.setdefault(str(d["step"]), StepState())
        new = str(d["state"])
        if new == "running":
            s.start, s.end = ev.time, None
        elif new in ("done", "failed"):
            if s.start is None:
                s.start = ev.time
            s.end = ev.time
        s.state = new
        if d.get("detail"):
            s.detail = str(d["detail"])
        if t.status == TaskStatus.PENDING:
            t.status = TaskStatus.RUNNING
    elif k == "input_runs":
        t.requested_iov = list(d.get("requested_iov") or []) or t.requested_iov
        t.runs = [list(r) for r in d.get("runs") or []]
        t.files = {str(a): int(b) for a, b in (d.get("files") or {}).items()}
    elif k == "payloads":
        t.global_tag = d.get("global_tag")
        t.payloads = [dict(p) for p in d.get("payloads") or []]
    elif k == "upload":
        t.upload = dict(d)
    elif k == "validation":
        t.validation = {
            "passed": bool(d.get("passed")),
            "figures": dict(d.get("figures") or {}),
            "plots": [str(p) for p in d.get("plots") or []],
            "message": str(d.get("message") or ""),
        }
    elif k == "task_succeeded":
        t.finished = ev.time
        t.duration = _duration(d, t, ev)
        validation_failed = t.validation is not None and not t.validation["passed"]
        t.status = TaskStatus.VALIDATION_FAILED if validation_failed else TaskStatus.SUCCESS
    elif k == "task_failed":
        t.finished = ev.time
        t.duration = _duration(d, t, ev)
        t.failure = {
            "reason": str(d.get("reason") or ""),
            "log_tail": str(d.get("log_tail") or ""),
            "log_path": str(d.get("log_path") or ""),
            "validation_failed": bool(d.get("validation_failed")),
            "vetoed": bool(d.get("vetoed")),
        }
        t.status = (TaskStatus.VETOED if t.failure["vetoed"] else
                    TaskStatus.VALIDATION_FAILED if t.failure["validation_failed"] else TaskStatus.FAILED)


def _duration(d: dict[str, Any], t: TaskState, ev: ReportEvent) -> float | None:
    if d.get("duration") is not None:
        return float(d["duration"])
    return None if t.started is None else max(0.0, ev.time - t.started)


def apply_all(state: BucketState, events: Iterable[ReportEvent]) -> BucketState:
    """Apply ``events`` (in seq order, after those already in ``state``) to ``state``."""
    for ev in events:
        apply_event(state, ev)
    return state


def fold(bucket: str, events: Iterable[ReportEvent]) -> BucketState:
    """Fold ``events`` (in seq order) into a fresh :class:`BucketState`."""
    return apply_all(BucketState(bucket=bucket), events)


def ordered_steps(t: TaskState) -> list[tuple[str, StepState]]:
    """The task's steps in canonical order (known steps first, then any others)."""
    known = [(s, t.steps[s]) for s in STEPS if s in t.steps]
    other = [(s, v) for s, v in t.steps.items() if s not in STEPS]
    return known + other
