"""Local transport: the issue Markdown written under the work dir.

``<work_dir>/report/issues/<name>.md`` (one per calibration) and ``<work_dir>/report/summary.md``.
Written for every run, also when GitLab is the configured transport (a local copy that needs no
network).  Files are re-rendered from the folded state and replaced atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ._io import atomic_write_text
from .markdown import carry_checklist, marker_bucket, parse_checklist, parse_marker, render_calibration, render_summary
from .outbox import DeliveryContext
from .state import BucketState, apply_all, fold


def safe_filename(name: str) -> str:
    """A file-system safe version of a task name."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name) or "_"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _write_if_changed(path: Path, old: str | None, new: str) -> None:
    """Replace ``path`` atomically, unless it already holds ``new`` (most events change one file or none)."""
    if old != new:
        atomic_write_text(path, new)


class LocalTransport:
    """Writes the report Markdown files under ``report_dir``."""

    name = "local"

    def __init__(self, report_dir: Path, min_interval_s: float = 0.0) -> None:
        """``min_interval_s`` > 0: re-render at most that often, except on a flush (coalesces the
        events of a bucket run; the driver's tick and its final flush bring the files up to date)."""
        self.dir = Path(report_dir)
        self.issues_dir = self.dir / "issues"
        self.summary_path = self.dir / "summary.md"
        self.min_interval_s = min_interval_s
        self._folded: tuple[str, int, BucketState] | None = None  # (outbox id, last seq folded, state)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_folded"] = None  # a pickled copy folds the log afresh
        return state

    def issue_path(self, name: str) -> Path:
        """Markdown file of calibration ``name``."""
        return self.issues_dir / f"{safe_filename(name)}.md"

    def pending_extra(self, cursor: dict[str, Any]) -> int:
        """Nothing besides events."""
        return 0

    def deliver(self, ctx: DeliveryContext) -> None:
        """Re-render the files touched by the pending events."""
        pending = ctx.pending
        if not pending:
            return
        state = self._fold(ctx)
        names: set[str] = set()
        all_tasks = any(e.kind in ("bucket_started", "global_tag") for e in pending)
        for t in state.calibrations():
            if all_tasks or any(e.task == t.name for e in pending):
                names.add(t.name)
        self.render(state, names)
        ctx.mark_delivered(pending[-1])

    def _fold(self, ctx: DeliveryContext) -> BucketState:
        """The bucket state after ``ctx.events``, folding only the events this process has not folded yet."""
        last = ctx.events[-1].seq or 0
        cached = self._folded
        if cached is not None and cached[0] == ctx.outbox_id and cached[1] <= last:
            state = cached[2]
            apply_all(state, (e for e in ctx.events if (e.seq or 0) > cached[1]))
        else:
            state = fold(ctx.bucket, ctx.events)
        self._folded = (ctx.outbox_id, last, state)
        return state

    def render(self, state: BucketState, names: set[str] | None = None) -> None:
        """Write the issue files of ``names`` (all calibrations if None) and the summary."""
        for t in state.calibrations():
            if names is not None and t.name not in names:
                continue
            path = self.issue_path(t.name)
            links = {p: os.path.relpath(p, self.issues_dir) for p in (t.validation or {}).get("plots", [])}
            body = render_calibration(state, t, plot_links=links, summary_link="../summary.md")
            old = _read(path)
            _write_if_changed(path, old, carry_checklist(old, body))
        links = {t.name: f"issues/{safe_filename(t.name)}.md" for t in state.calibrations()}
        _write_if_changed(self.summary_path, _read(self.summary_path), render_summary(state, links))

    def read_signoffs(self, bucket: str) -> dict[str, dict[str, Any]]:
        """Checklist state of every local issue file of ``bucket``."""
        out: dict[str, dict[str, Any]] = {}
        if not self.issues_dir.is_dir():
            return out
        for path in sorted(self.issues_dir.glob("*.md")):
            text = path.read_text(encoding="utf-8")
            marker = parse_marker(text)
            if marker is None or marker[0] != marker_bucket(bucket) or marker[1] is None:
                continue
            out[marker[1]] = {"checklist": parse_checklist(text), "labels": [], "url": str(path)}
        return out
