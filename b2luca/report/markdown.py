"""Markdown bodies of the calibration issues and the bucket summary.

The same text goes to the local transport (files under the work dir) and to GitLab;
only link targets differ (relative file paths locally, issue URLs / uploads on GitLab).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .events import ReportEvent
from .state import BucketState, TaskState, ordered_steps

CHECKLIST_ITEMS: tuple[str, ...] = ("payloads reviewed", "sign-off")
LOG_TAIL_MAX_LINES = 200
LOG_TAIL_MAX_CHARS = 30_000

_MARKER_RE = re.compile(r"<!--\s*b2luca:bucket=([^;>]*?);(calibration=([^>]*?)|summary)\s*-->")
_CHECK_RE = re.compile(r"^\s*[-*]\s+\[([ xX])\]\s+(payloads reviewed|sign-off)\s*$", re.MULTILINE)
_FPRINT_RE = re.compile(r"<!--\s*b2luca:checklist=([0-9a-f]+)\s*-->")
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}


def _clean(s: str) -> str:
    """Make a name safe inside an HTML comment marker."""
    return re.sub(r"[;<>\n\r]|--", "_", str(s))


def marker_bucket(bucket: str) -> str:
    """How ``bucket`` appears inside markers (for comparisons with :func:`parse_marker`)."""
    return _clean(bucket)


def calibration_marker(bucket: str, name: str) -> str:
    """Hidden marker identifying the issue of one calibration in one bucket."""
    return f"<!-- b2luca:bucket={_clean(bucket)};calibration={_clean(name)} -->"


def summary_marker(bucket: str) -> str:
    """Hidden marker identifying the summary issue of one bucket."""
    return f"<!-- b2luca:bucket={_clean(bucket)};summary -->"


def parse_marker(text: str | None) -> tuple[str, str | None] | None:
    """``(bucket, calibration)`` from a body's marker; calibration None for the summary; None if absent."""
    if not text:
        return None
    m = _MARKER_RE.search(text)
    if not m:
        return None
    return m.group(1), (m.group(3) if m.group(3) is not None else None)


def issue_title(bucket: str, name: str) -> str:
    """Title of a calibration issue: ``[<bucket>] <calibration name>``."""
    return f"[{bucket}] {name}"


def summary_title(bucket: str) -> str:
    """Title of the bucket summary issue."""
    return f"[{bucket}] bucket summary"


def fmt_time(t: float | None) -> str:
    """UTC wall time, or an em dash."""
    if t is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def fmt_duration(d: float | None) -> str:
    """Human duration: ``12.3 s``, ``4 min 05 s``, ``1 h 02 min``; em dash if unknown."""
    if d is None:
        return "—"
    if d < 60:
        return f"{d:.1f} s"
    m, s = divmod(int(round(d)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_iov(iov: Any) -> str:
    """``(e, r, e, r)`` from a list or an ``"e,r,e,r"`` string."""
    if iov is None:
        return "—"
    if isinstance(iov, str):
        return f"`({iov.replace(',', ', ')})`"
    return "`(" + ", ".join(str(int(x)) for x in iov) + ")`"


def fmt_runs(runs: list[list[int]]) -> str:
    """Compress ``[[exp, run], ...]`` into ``exp 12: runs 1-5, 9 (6 runs)`` per experiment."""
    if not runs:
        return "none"
    by_exp: dict[int, list[int]] = {}
    for exp, run in runs:
        by_exp.setdefault(int(exp), []).append(int(run))
    parts = []
    for exp in sorted(by_exp):
        rs = sorted(set(by_exp[exp]))
        ranges, lo, prev = [], rs[0], rs[0]
        for r in rs[1:] + [None]:  # type: ignore[operator]
            if r is not None and r == prev + 1:
                prev = r
                continue
            ranges.append(f"{lo}" if lo == prev else f"{lo}-{prev}")
            if r is not None:
                lo = prev = r
        parts.append(f"exp {exp}: runs {', '.join(ranges)} ({len(rs)} run{'s' if len(rs) != 1 else ''})")
    return "; ".join(parts)


def _cell(v: Any) -> str:
    s = str(v).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    return s if s else " "


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _tail(text: str) -> str:
    lines = text.rstrip("\n").splitlines()
    clipped = lines[-LOG_TAIL_MAX_LINES:]
    out = "\n".join(clipped)
    if len(out) > LOG_TAIL_MAX_CHARS:
        out = out[-LOG_TAIL_MAX_CHARS:]
        out = out[out.find("\n") + 1 :] if "\n" in out else out
    if len(clipped) < len(lines) or len(out) < len("\n".join(clipped)):
        out = "[… earlier lines cut …]\n" + out
    return out


def _fenced(text: str, info: str = "text") -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def details(summary: str, body: str) -> str:
    """A collapsed ``<details>`` block (blank line after ``</summary>`` so Markdown renders inside)."""
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def checklist_fingerprint(t: TaskState) -> str:
    """Identifies what the expert signs off: the produced payload revisions of this attempt."""
    key = "|".join(f"{p.get('name')}:{p.get('revision')}:{p.get('iov')}" for p in t.payloads)
    key += f"|attempt={t.attempt}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _plot_link(path: str, plot_links: Mapping[str, str]) -> str:
    name = Path(path).name
    target = plot_links.get(path)
    if target is None:
        return f"- `{name}` (not uploaded yet)"
    if target.startswith("!") or target.startswith("["):  # ready-made markdown from GitLab
        return f"- {target}"
    if Path(path).suffix.lower() in _IMAGE_EXT:
        return f"- [{name}]({target})<br>![{name}]({target})"
    return f"- [{name}]({target})"


def render_calibration(
    state: BucketState, t: TaskState, plot_links: Mapping[str, str] | None = None, summary_link: str | None = None
) -> str:
    """Full issue body of calibration ``t``."""
    plot_links = plot_links or {}
    out: list[str] = [calibration_marker(state.bucket, t.name), ""]
    expert = f"@{t.expert}" if t.expert else "—"
    out.append(
        f"**Status:** `{t.status}` · **Stage:** {t.stage} · **Group:** {t.group} · **Expert:** {expert}"
        + (f" · **Attempt:** {t.attempt}" if t.attempt > 1 else "")
    )
    out.append("")
    if state.published:
        out += [f"**Closed:** global tag `{state.global_tag.get('tag')}` published "  # type: ignore[union-attr]
                f"{fmt_time(state.global_tag.get('time'))}.", ""]  # type: ignore[union-attr]
    if t.description:
        out += [t.description, ""]
    meta = [f"Bucket `{state.bucket}`"]
    if state.settings_commit:
        meta.append(f"settings commit `{state.settings_commit}`")
    if t.depends_on:
        meta.append("depends on " + ", ".join(f"`{d}`" for d in t.depends_on))
    if summary_link:
        meta.append(f"[bucket summary]({summary_link})")
    out += [" · ".join(meta), ""]

    out += ["## Status", "", "| step | state | start | duration |", "|---|---|---|---|"]
    steps = ordered_steps(t)
    if not steps:
        out.append("| — | pending | — | — |")
    for name, s in steps:
        state_txt = s.state + (f" ({s.detail})" if s.detail else "")
        out.append(f"| {_cell(name)} | {_cell(state_txt)} | {fmt_time(s.start)} | {fmt_duration(s.duration)} |")
    out.append(
        f"\nStarted {fmt_time(t.started)}, finished {fmt_time(t.finished)}, duration {fmt_duration(t.duration)}."
    )
    out.append("")

    out += ["## Input", ""]
    out.append(f"- Requested IoV: {fmt_iov(t.requested_iov or state.requested_iov)}")
    out.append(f"- Input runs: {fmt_runs(t.runs) if t.runs else '—'}")
    if t.files:
        out.append("- Files: " + ", ".join(f"`{k}`: {v}" for k, v in sorted(t.files.items())))
    out.append("")

    out += ["## Payloads", ""]
    if t.payloads:
        if t.global_tag:
            out += [f"Global tag: `{t.global_tag}`", ""]
        out += ["| payload | revision | IoV |", "|---|---|---|"]
        for p in t.payloads:
            out.append(f"| {_cell(p.get('name'))} | {_cell(p.get('revision'))} | {fmt_iov(p.get('iov'))} |")
    elif t.planned_payloads:
        out.append("Not produced yet (planned: " + ", ".join(f"`{p}`" for p in t.planned_payloads) + ").")
    else:
        out.append("—")
    out.append("")

    out += ["## Validation", ""]
    v = t.validation
    if v is None:
        out.append("—")
    else:
        out.append(f"**{'passed' if v['passed'] else 'FAILED'}**" + (f": {v['message']}" if v["message"] else ""))
        if v["figures"]:
            out += ["", "| figure | value |", "|---|---|"]
            for k, val in v["figures"].items():
                out.append(f"| {_cell(k)} | {_cell(_fmt_value(val))} |")
        if v["plots"]:
            out += ["", "Plots:", ""]
            out += [_plot_link(p, plot_links) for p in v["plots"]]
    out.append("")

    out += render_upload(t)

    if t.failure is not None:
        f = t.failure
        what = "Vetoed" if f.get("vetoed") else "Validation failed" if f["validation_failed"] else "Failed"
        out += ["## Failure", "", f"**{what}:** "
                f"{f['reason'] or 'no reason given'}", ""]
        if f["log_tail"]:
            label = f"log tail ({f['log_path']})" if f["log_path"] else "log tail"
            out += [details(label, _fenced(_tail(f["log_tail"]))), ""]
        elif f["log_path"]:
            out += [f"Log: `{f['log_path']}`", ""]

    out += ["## Expert checklist", "", f"<!-- b2luca:checklist={checklist_fingerprint(t)} -->"]
    out += [f"- [ ] {item}" for item in CHECKLIST_ITEMS]
    out.append("")
    return "\n".join(out)


def render_upload(t: TaskState) -> list[str]:
    """The ``## Upload`` section: the update/veto rule, its figures and the decision per payload."""
    u = t.upload
    if u is None:
        return []
    out = ["## Upload", "", f"Global tag `{u.get('global_tag')}` ({u.get('backend')} conditions DB). "
           f"Rule: {u.get('rule')}.", "",
           "| payload | decision | significance | max \\|change\\| | max error | reason |", "|---|---|---|---|---|---|"]
    for x in u.get("decisions") or []:
        fig = x.get("figures") or {}
        values = [_fmt_value(fig[k]) if k in fig else "—" for k in ("significance", "max_change", "max_error")]
        out.append(f"| {_cell(x.get('name'))} | **{_cell(x.get('outcome'))}** | {values[0]} | {values[1]} | "
                   f"{values[2]} | {_cell(x.get('reason'))} |")
    uploads = u.get("uploads") or []
    if uploads and u.get("backend") == "central":
        new = sum(1 for r in uploads if r.get("new_payload"))
        out += ["", f"Conditions DB: {new} new payload(s), {sum(1 for r in uploads if r.get('new_iov'))} new IoV(s), "
                f"{len(uploads) - new} already there."]
    out.append("")
    return out


def render_summary(state: BucketState, links: Mapping[str, str] | None = None) -> str:
    """Full body of the bucket summary issue."""
    links = links or {}
    out = [summary_marker(state.bucket), ""]
    out.append(f"**Verdict:** `{state.verdict}`")
    out.append("")
    out.append(f"- Requested IoV: {fmt_iov(state.requested_iov)}")
    out.append(f"- Settings commit: `{state.settings_commit}`" if state.settings_commit else "- Settings commit: —")
    out.append(f"- Started: {fmt_time(state.started)}; finished: {fmt_time(state.finished)}")
    if state.work_dir:
        out.append(f"- Work dir: `{state.work_dir}`")
    if state.global_tag:
        g = state.global_tag
        out.append(f"- Prompt global tag: `{g.get('tag')}` ({g.get('backend')}): **{g.get('state')}** — {g.get('reason')}")
    out.append("")
    out += ["## Tasks", "", "| stage | group | task | state | duration | report |", "|---|---|---|---|---|---|"]
    for t in state.tasks.values():
        link = f"[issue]({links[t.name]})" if t.name in links else "—"
        shown = f"`{t.status}`"
        if state.finished is not None and t.status in ("pending", "running"):
            shown += " (not run)" if t.status == "pending" else " (interrupted)"
        out.append(
            f"| {_cell(t.stage)} | {_cell(t.group)} | {_cell(t.name)} | {shown} | "
            f"{fmt_duration(t.duration)} | {link} |"
        )
    out.append("")
    counts = state.counts or state.live_counts()
    out.append("Counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) if counts else "Counts: —")
    out.append("")
    out += ["## Archive", ""]
    if state.archives:
        out += [f"- `{g}`: `{loc}`" for g, loc in state.archives.items()]
    else:
        out.append("—")
    out.append("")
    out += ["## Final verdict", ""]
    if state.success is None:
        out.append("Bucket still running." if state.started is not None else "Bucket not started.")
    else:
        out.append("**SUCCESS**: every task succeeded." if state.success else "**FAILED**: see the failed tasks above.")
    out.append("")
    return "\n".join(out)


def parse_checklist(text: str | None) -> dict[str, bool]:
    """Ticked state of the expert checklist items found in ``text``."""
    found = {item: False for item in CHECKLIST_ITEMS}
    for mark, item in _CHECK_RE.findall(text or ""):
        found[item] = mark.lower() == "x"
    return found


def carry_checklist(old: str | None, new: str) -> str:
    """Carry the expert's ticks from ``old`` into ``new`` when both sign off the same results.

    Ticks are kept only when the checklist fingerprint (payload revisions + attempt) is unchanged;
    a new attempt or new payload revisions resets the checklist.
    """
    if not old:
        return new
    fo, fn = _FPRINT_RE.search(old), _FPRINT_RE.search(new)
    if not fo or not fn or fo.group(1) != fn.group(1):
        return new
    ticks = parse_checklist(old)

    def repl(m: re.Match[str]) -> str:
        return f"- [{'x' if ticks.get(m.group(2)) else ' '}] {m.group(2)}"

    return _CHECK_RE.sub(repl, new)


def event_note(ev: ReportEvent, t: TaskState | None, link: str | None = None) -> str | None:
    """Note for one event on its calibration issue, only where the expert should know or act.

    Notes notify the expert, so progress (started, steps, runs, payload imports) stays in the description's
    status table.  Notes: finished (with the validation verdict and the upload decision), failed,
    validation failed, vetoed; the tag's reopening and publication come from :func:`global_tag_note`.
    """
    d = ev.data
    mention = f"@{t.expert} " if t is not None and t.expert else ""
    if ev.kind == "task_succeeded":
        if t is not None and t.validation is not None and not t.validation["passed"]:
            return None  # the task_failed(validation_failed) note says it
        verdict = ""
        if t is not None and t.validation is not None:
            verdict = " Validation **passed**" + (f": {t.validation['message']}" if t.validation["message"] else "") + "."
        uploaded = ""
        if t is not None and t.upload is not None:
            decisions = t.upload.get("decisions") or []
            done = [x["name"] for x in decisions if x.get("outcome") == "uploaded"]
            kept = [x["name"] for x in decisions if x.get("outcome") == "not uploaded"]
            uploaded = (f" Uploaded to `{t.upload.get('global_tag')}`: {', '.join(done) or 'nothing'}"
                        + (f"; not uploaded (below threshold): {', '.join(kept)}" if kept else "") + ".")
        return f"{mention}finished.{verdict}{uploaded} Please review the payloads and sign off."
    if ev.kind == "task_failed":
        if d.get("vetoed"):
            return (f"{mention}**vetoed** by the update/veto rule: {d.get('reason') or 'no reason given'}. Nothing was "
                    "uploaded; please look at the figures in the description (rerun with adjusted thresholds in "
                    "calibrations.upload, or fix the calibration).")
        if d.get("validation_failed"):
            message = (t.validation or {}).get("message") if t is not None else ""
            return (f"{mention}validation **FAILED**" + (f": {message}" if message else "")
                    + ". The payloads were not published. Please have a look.")
        return f"{mention}the calibration failed: {d.get('reason') or 'no reason given'} (log tail in the description)."
    return None


def global_tag_note(ev: ReportEvent) -> str | None:
    """Note for a state change of the prompt global tag (summary issue and the issues it names)."""
    d = ev.data
    state = d.get("state")
    tag = f"`{d.get('tag')}`"
    if state == "OPEN":
        return f"Prompt global tag {tag} **reopened** (was {d.get('previous')}): {d.get('reason')}. Sign-offs of the " \
               "rerun calibrations are reset."
    if state == "TESTING":
        return f"Prompt global tag {tag} is now **TESTING**: every calibration passed. Experts: please sign off."
    if state == "PUBLISHED":
        return f"Prompt global tag {tag} **PUBLISHED**: the constants are ready for reconstruction. Closing."
    return None


def summary_note(ev: ReportEvent) -> str | None:
    """Note for one event on the summary issue (None: no note).

    Only the end of a run that did something, and the tag's state changes; a rerun in which every task
    was already done posts nothing.
    """
    d = ev.data
    if ev.kind == "bucket_finished":
        counts = d.get("counts") or {}
        if counts and all(str(k).startswith("done before") for k in counts) and d.get("success"):
            return None
        return f"Bucket run finished: **{'SUCCESS' if d.get('success') else 'FAILED'}**."
    if ev.kind == "global_tag":
        return global_tag_note(ev)
    return None
