"""Report events: the only thing the task graph hands to the reporting layer.

An event is a small JSON-serialisable record.  The DAG emits them through
:meth:`b2luca.report.Reporter.emit`; they are appended to the on-disk outbox
(``<work_dir>/report/events.jsonl``) and delivered by the transports.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any
from ..errors import EventError

#: Every event kind the reporting layer understands (DESIGN §7).
EVENT_KINDS: frozenset[str] = frozenset(
    {
        "bucket_started",
        "task_started",
        "step",
        "input_runs",
        "payloads",
        "validation",
        "task_succeeded",
        "task_failed",
        "archived",
        "bucket_finished",
    }
)

#: The CalibrationTask steps, in the order they are shown in the status table.
STEPS: tuple[str, ...] = ("caf_config", "input_data", "calibrate", "validate", "import_payloads")
STEP_STATES: frozenset[str] = frozenset({"running", "done", "failed", "skipped"})

#: Kinds that must name a task.
_TASK_KINDS = EVENT_KINDS - {"bucket_started", "bucket_finished"}


def _json_safe(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _json_safe(value.tolist())
    if hasattr(value, "__fspath__"):
        return str(value)
    raise EventError(f"value {value!r} of type {type(value).__name__} is not JSON-serialisable")


@dataclass
class ReportEvent:
    """One report event.

    ``seq`` is assigned by the outbox when the event is appended (monotonic per work dir);
    ``time`` is the UNIX time at which the event was emitted.
    """

    kind: str
    bucket: str
    task: str | None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0
    seq: int | None = None

    def validate(self) -> None:
        """Raise :class:`EventError` if the event is malformed."""
        if self.kind not in EVENT_KINDS:
            raise EventError(f"unknown report event kind {self.kind!r} (known: {sorted(EVENT_KINDS)})")
        if self.kind in _TASK_KINDS and not self.task:
            raise EventError(f"report event {self.kind!r} needs a task name")
        if not isinstance(self.data, dict):
            raise EventError(f"report event {self.kind!r}: data must be a dict")
        if self.kind == "step":
            step, state = self.data.get("step"), self.data.get("state")
            if step not in STEPS:
                raise EventError(f"step event for {self.task!r}: unknown step {step!r} (known: {STEPS})")
            if state not in STEP_STATES:
                raise EventError(f"step event for {self.task!r}: unknown state {state!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        d = asdict(self)
        d["data"] = _json_safe(self.data)
        return d

    def to_json(self) -> str:
        """One compact JSON line (no newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ReportEvent":
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                kind=d["kind"],
                bucket=d["bucket"],
                task=d.get("task"),
                data=dict(d.get("data") or {}),
                time=float(d.get("time", 0.0)),
                seq=d.get("seq"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EventError(f"malformed report event {d!r}: {exc}") from exc

    @classmethod
    def from_json(cls, line: str) -> "ReportEvent":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(line))
