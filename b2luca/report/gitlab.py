"""GitLab transport (python-gitlab 8.x): one issue per calibration + one summary issue per bucket.

Configuration: :class:`b2luca.config.GitLabConfig` (``report.gitlab`` in the bucket YAML): ``url``,
``project`` (path or id), ``token_env`` (name of an environment variable holding the token) or
``config_section`` (+ optional ``config_file``; otherwise ``PYTHON_GITLAB_CFG`` / ``~/.python-gitlab.cfg``),
``timeout``, ``ssl_verify``, and the tuning keys ``max_retries`` (transient errors), ``max_retry_after``
(longest Retry-After slept through inside one delivery) and ``rate_limit_retries``.
The token is never read from the YAML, never logged (log records are redacted) and never written to disk.

Issues are found again by the hidden marker in their description (listing the issues labelled
``b2luca`` + ``bucket::<bucket>``), never by title search.  Labels are changed with explicit
``add_labels``/``remove_labels`` (scoped labels are exclusive only on paid GitLab).
"""

from __future__ import annotations

import email.utils
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import gitlab
import gitlab.config
import gitlab.exceptions
import requests

from .. import __version__
from ..config import GitLabConfig
from .markdown import (
    carry_checklist,
    event_note,
    issue_title,
    marker_bucket,
    parse_checklist,
    parse_marker,
    render_calibration,
    render_summary,
    summary_note,
    summary_title,
)
from ._secrets import redact as _redact
from ._secrets import guard_http_debug, register_secret
from .outbox import DeliveryContext, ReportConfigError, TransportError
from .state import STATUSES, BucketState, apply_event, fold

log = logging.getLogger("b2luca.report.gitlab")

USER_AGENT = f"b2luca/{__version__}"
SUMMARY_KEY = "__summary__"
STAGE_LABELS = ("raw", "cdst", "local")
SUMMARY_EVENTS = frozenset(
    {"bucket_started", "task_started", "task_succeeded", "task_failed", "archived", "bucket_finished"}
)


# --------------------------------------------------------------------------- client
def _retry_after_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _B2Gitlab(gitlab.Gitlab):
    """python-gitlab client with bounded retries and a capped, honoured Retry-After on 429."""

    def __init__(self, *args: Any, b2_max_retries: int = 3, b2_max_retry_after: float = 60.0,
                 b2_rate_limit_retries: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._b2_max_retries = b2_max_retries
        self._b2_max_retry_after = b2_max_retry_after
        self._b2_rate_limit_retries = b2_rate_limit_retries
        self._b2_local = threading.local()
        self.session.hooks["response"].append(self._b2_hook)

    def _b2_hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._b2_local.retry_after = (
            _retry_after_seconds(response.headers.get("Retry-After")) if response.status_code == 429 else None
        )

    def http_request(self, verb: str, path: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["obey_rate_limit"] = False
        kwargs.setdefault("max_retries", self._b2_max_retries)
        limited = 0
        while True:
            try:
                return super().http_request(verb, path, *args, **kwargs)
            except gitlab.exceptions.GitlabHttpError as exc:
                if exc.response_code != 429:
                    raise
                wait = getattr(self._b2_local, "retry_after", None)
                wait = 1.0 if wait is None else wait
                limited += 1
                if limited > self._b2_rate_limit_retries or wait > self._b2_max_retry_after:
                    raise TransportError(
                        f"GitLab rate limit (429), Retry-After {wait:.0f} s", retry_after=wait, rate_limited=True
                    ) from None
                log.info("GitLab rate limit (429): waiting %.1f s as asked (Retry-After)", wait)
                time.sleep(wait)


def _token_from(gcfg: GitLabConfig) -> tuple[str | None, dict[str, Any]]:
    """(url, auth kwargs) from the env var or the python-gitlab config section; never from YAML."""
    token_env = gcfg.token_env
    section = gcfg.config_section
    url = gcfg.url
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ReportConfigError(
                f"report.gitlab.token_env names environment variable {token_env!r}, which is not set or empty"
            )
        return url, {"private_token": token}
    if section:
        cfg_file = gcfg.config_file
        try:
            parsed = gitlab.config.GitlabConfigParser(
                gitlab_id=section, config_files=[str(cfg_file)] if cfg_file else None
            )
        except gitlab.config.ConfigError as exc:
            where = cfg_file or os.environ.get("PYTHON_GITLAB_CFG") or "~/.python-gitlab.cfg"
            raise ReportConfigError(f"python-gitlab config section {section!r} in {where}: {exc}") from None
        auth = {k: getattr(parsed, k) for k in ("private_token", "oauth_token", "job_token") if getattr(parsed, k)}
        if not auth:
            raise ReportConfigError(f"python-gitlab config section {section!r} has no token")
        return url or parsed.url, auth
    raise ReportConfigError(
        "report.gitlab needs token_env (an environment variable name) or config_section "
        "(a python-gitlab config section); the token itself never goes into the YAML"
    )


def make_client(gcfg: GitLabConfig) -> _B2Gitlab:
    """A configured python-gitlab client (no request made yet)."""
    url, auth = _token_from(gcfg)
    if not url:
        raise ReportConfigError("report.gitlab.url is not set")
    for secret in auth.values():
        register_secret(str(secret))
    return _B2Gitlab(
        url,
        ssl_verify=gcfg.ssl_verify,
        timeout=float(gcfg.timeout),
        user_agent=USER_AGENT,
        retry_transient_errors=True,
        per_page=100,
        b2_max_retries=gcfg.max_retries,
        b2_max_retry_after=gcfg.max_retry_after,
        b2_rate_limit_retries=gcfg.rate_limit_retries,
        **auth,
    )


def _http_code(exc: BaseException) -> int | None:
    return getattr(exc, "response_code", None)


def _as_transport_error(exc: BaseException) -> TransportError:
    if isinstance(exc, TransportError):
        return exc
    code = _http_code(exc)
    what = f"HTTP {code}" if code else type(exc).__name__
    return TransportError(_redact(f"GitLab unavailable ({what}): {exc}"))


# --------------------------------------------------------------------------- transport
class GitLabTransport:
    """Delivers report events to GitLab issues."""

    name = "gitlab"

    def __init__(self, gcfg: GitLabConfig, bucket: str) -> None:
        self.gcfg = gcfg
        self.bucket = bucket
        self.project_ref = gcfg.project
        if not self.project_ref:
            raise ReportConfigError("report.gitlab.project is not set")
        self._gl: _B2Gitlab | None = None
        self._project: Any = None
        self._pid: int | None = None
        self._listed = False
        # fail early on configuration errors (no token ...), without any request; from now on the
        # token is redacted from logs and emitted events of this process
        self._register()

    def _register(self) -> None:
        for secret in _token_from(self.gcfg)[1].values():
            register_secret(str(secret))

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d.update(_gl=None, _project=None, _pid=None, _listed=False)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        try:
            self._register()
        except ReportConfigError:
            pass  # reported when delivering

    # ---------------------------------------------------------------- connection
    def _connect(self) -> Any:
        if self._gl is None or self._pid != os.getpid():
            self._gl = make_client(self.gcfg)
            # non-lazy: a lazy project addressed by path double-encodes the path in some calls (upload)
            self._project = self._gl.projects.get(self.project_ref)
            self._pid = os.getpid()
            self._listed = False
        return self._project

    def preflight(self) -> None:
        """GET the project: ReportConfigError if missing/no access/bad token, TransportError if unreachable."""
        gl = make_client(self.gcfg)
        try:
            project = gl.projects.get(self.project_ref)
        except gitlab.exceptions.GitlabAuthenticationError:
            raise ReportConfigError(
                f"GitLab {gl.url}: the token was rejected (401); check the token's scope (api) and expiry"
            ) from None
        except gitlab.exceptions.GitlabGetError as exc:
            if exc.response_code in (403, 404):
                raise ReportConfigError(
                    f"GitLab {gl.url}: project {self.project_ref!r} is missing or the token has no access "
                    f"to it (HTTP {exc.response_code})"
                ) from None
            raise _as_transport_error(exc) from None
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            raise _as_transport_error(exc) from None
        log.info("GitLab project %s reachable (id %s)", project.path_with_namespace, project.id)

    # ---------------------------------------------------------------- delivery
    def pending_extra(self, cursor: dict[str, Any]) -> int:
        """Issue bodies still to refresh."""
        return len(cursor.get("dirty", []))

    def deliver(self, ctx: DeliveryContext) -> None:
        """Deliver pending events (issues, notes, uploads), then refresh the touched bodies."""
        guard_http_debug()
        try:
            self._deliver(ctx)
        except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
            self._gl = None  # reconnect next time
            raise _as_transport_error(exc) from None

    def _deliver(self, ctx: DeliveryContext) -> None:
        pending = ctx.pending
        cur = ctx.cursor
        cur.setdefault("issues", {})
        cur.setdefault("urls", {})
        cur.setdefault("uploads", {})
        cur.setdefault("users", {})
        dirty: set[str] = set(cur.get("dirty", []))
        if not pending and not dirty:
            return
        project = self._connect()
        final = fold(ctx.bucket, ctx.events)
        # state as of each event, for notes (attempt numbers, ...)
        now = fold(ctx.bucket, [e for e in ctx.events if (e.seq or 0) <= ctx.delivered_seq])
        for ev in pending:
            apply_event(now, ev)
            keys = self._keys_for(ev, final)
            for key in keys:
                self._ensure_issue(project, key, final, cur, ctx)
            replay = cur.get("inflight") == ev.seq
            cur["inflight"] = ev.seq
            ctx.commit()
            self._side_effects(project, ev, now, cur, ctx, replay)
            dirty.update(keys)
            cur["dirty"] = sorted(dirty)
            cur.pop("inflight", None)
            ctx.mark_delivered(ev)
        for key in sorted(dirty, key=lambda k: (k == SUMMARY_KEY, k)):
            self._refresh(project, key, final, cur, ctx)
            dirty.discard(key)
            cur["dirty"] = sorted(dirty)
            ctx.commit()

    def _keys_for(self, ev: Any, final: BucketState) -> list[str]:
        keys: list[str] = []
        if ev.kind == "bucket_started":
            keys = [t.name for t in final.calibrations()]
        elif ev.task is not None and ev.task in final.tasks and final.tasks[ev.task].has_issue:
            keys = [ev.task]
        if ev.kind in SUMMARY_EVENTS or (ev.task is not None and not keys):
            keys.append(SUMMARY_KEY)
        return keys

    # ---------------------------------------------------------------- issues
    def _labels(self, key: str, state: BucketState) -> tuple[list[str], list[str]]:
        """(labels wanted, labels of ours that must go)."""
        base = ["b2luca", f"bucket::{state.bucket}"]
        if key == SUMMARY_KEY:
            status = {"pending": "pending", "running": "running", "success": "success"}.get(state.verdict, "failed")
            stage = None
        else:
            t = state.tasks[key]
            status = t.status
            stage = "cdst" if t.stage in ("cdst", "cdst_production") else t.stage
        want = base + [f"status::{status}"] + ([f"stage::{stage}"] if stage in STAGE_LABELS else [])
        ours = [f"status::{s}" for s in STATUSES] + [f"stage::{s}" for s in STAGE_LABELS]
        return want, [lab for lab in ours if lab not in want]

    def _body(self, key: str, state: BucketState, cur: dict[str, Any]) -> str:
        if key == SUMMARY_KEY:
            return render_summary(state, links=cur["urls"])
        t = state.tasks[key]
        return render_calibration(state, t, plot_links=cur["uploads"], summary_link=cur["urls"].get(SUMMARY_KEY))

    def _title(self, key: str) -> str:
        return summary_title(self.bucket) if key == SUMMARY_KEY else issue_title(self.bucket, key)

    def _list_issues(self, project: Any, cur: dict[str, Any], ctx: DeliveryContext) -> None:
        """Find our issues by their hidden marker (all pages, open and closed)."""
        found: dict[str, Any] = {}
        for issue in project.issues.list(labels=["b2luca", f"bucket::{self.bucket}"], iterator=True):
            marker = parse_marker(issue.description)
            if marker is None or marker[0] != marker_bucket(self.bucket):
                continue
            key = SUMMARY_KEY if marker[1] is None else marker[1]
            if key not in found or issue.iid < found[key].iid:
                found[key] = issue
        for key, issue in found.items():
            cur["issues"][key] = issue.iid
            cur["urls"][key] = issue.web_url
        self._listed = True
        ctx.commit()

    def _user_id(self, username: str | None, cur: dict[str, Any], ctx: DeliveryContext) -> int | None:
        if not username:
            return None
        if username not in cur["users"]:
            users = self._gl.users.list(username=username, get_all=False)  # type: ignore[union-attr]
            cur["users"][username] = users[0].id if users else None
            if not users:
                log.warning("GitLab user %r (expert_username) not found: issue left unassigned", username)
            ctx.commit()
        return cur["users"][username]

    def _ensure_issue(self, project: Any, key: str, state: BucketState, cur: dict[str, Any],
                      ctx: DeliveryContext) -> int:
        if key in cur["issues"]:
            return int(cur["issues"][key])
        if not self._listed:
            self._list_issues(project, cur, ctx)
            if key in cur["issues"]:
                return int(cur["issues"][key])
        want, _ = self._labels(key, state)
        data: dict[str, Any] = {
            "title": self._title(key),
            "description": self._body(key, state, cur),
            "labels": ",".join(want),
        }
        if key != SUMMARY_KEY:
            uid = self._user_id(state.tasks[key].expert, cur, ctx)
            if uid is not None:
                data["assignee_ids"] = [uid]
        issue = project.issues.create(data)
        cur["issues"][key] = issue.iid
        cur["urls"][key] = issue.web_url
        ctx.commit()
        log.info("created GitLab issue #%s for %s", issue.iid, key)
        return int(issue.iid)

    def _get_issue(self, project: Any, key: str, state: BucketState, cur: dict[str, Any],
                   ctx: DeliveryContext) -> Any:
        """GET the issue; if it vanished (404), find or create it again."""
        for _ in range(2):
            iid = self._ensure_issue(project, key, state, cur, ctx)
            try:
                return project.issues.get(iid)
            except gitlab.exceptions.GitlabGetError as exc:
                if exc.response_code != 404:
                    raise
                log.warning("GitLab issue #%s of %s is gone; looking for it again", iid, key)
                cur["issues"].pop(key, None)
                self._listed = False
        raise TransportError(f"GitLab issue for {key} keeps disappearing")

    def _refresh(self, project: Any, key: str, state: BucketState, cur: dict[str, Any],
                 ctx: DeliveryContext) -> None:
        issue = self._get_issue(project, key, state, cur, ctx)
        body = carry_checklist(issue.description, self._body(key, state, cur))
        want, drop = self._labels(key, state)
        current = set(issue.labels)
        add = [lab for lab in want if lab not in current]
        remove = [lab for lab in drop if lab in current]
        data: dict[str, Any] = {}
        if body.rstrip() != (issue.description or "").rstrip():  # GitLab may trim the final newline
            data["description"] = body
        if issue.title != self._title(key):
            data["title"] = self._title(key)
        if add:
            data["add_labels"] = ",".join(add)
        if remove:
            data["remove_labels"] = ",".join(remove)
        if key != SUMMARY_KEY:
            t = state.tasks[key]
            uid = self._user_id(t.expert, cur, ctx)
            assigned = [a["id"] for a in (issue.assignees or [])]
            if uid is not None and assigned != [uid]:
                data["assignee_ids"] = [uid]
            if issue.state == "closed" and t.status in ("running", "failed", "validation-failed"):
                data["state_event"] = "reopen"
        if data:
            project.issues.update(issue.iid, data)
        cur["urls"][key] = issue.web_url

    # ---------------------------------------------------------------- notes, uploads
    def _side_effects(self, project: Any, ev: Any, now: BucketState, cur: dict[str, Any],
                      ctx: DeliveryContext, replay: bool) -> None:
        if ev.kind == "validation":
            for plot in ev.data.get("plots") or []:
                plot = str(plot)
                if plot in cur["uploads"]:
                    continue
                path = Path(plot)
                if not path.is_file():
                    log.warning("validation plot %s of %s does not exist; not uploaded", plot, ev.task)
                    cur["uploads"][plot] = f"`{path.name}` (file missing)"
                else:
                    up = project.upload(path.name, filepath=str(path))
                    cur["uploads"][plot] = up.get("markdown") or f"[{path.name}]({up['url']})"
                ctx.commit()
        notes: list[tuple[str, str]] = []
        task_has_issue = ev.task is not None and ev.task in now.tasks and now.tasks[ev.task].has_issue
        if task_has_issue:
            text = event_note(ev, now.tasks[ev.task])
            if text:
                notes.append((ev.task, text))
        if ev.task is None or ev.kind == "archived":
            text = summary_note(ev)
            if text:
                notes.append((SUMMARY_KEY, text))
        for key, text in notes:
            marker = f"<!-- b2luca:note={ctx.outbox_id}:{ev.seq} -->"
            iid = int(cur["issues"][key])
            issue = project.issues.get(iid, lazy=True)
            if replay and any(marker in (n.body or "") for n in issue.notes.list(iterator=True)):
                continue  # posted just before a crash: exactly once
            try:
                issue.notes.create({"body": f"{text}\n\n{marker}"})
            except gitlab.exceptions.GitlabCreateError as exc:
                if exc.response_code != 404:
                    raise
                cur["issues"].pop(key, None)
                self._listed = False
                raise TransportError(f"GitLab issue #{iid} of {key} is gone") from None


# --------------------------------------------------------------------------- sign-off read back
def read_signoffs(gcfg: GitLabConfig, bucket: str) -> dict[str, dict[str, Any]]:
    """Checklist ticks, labels and URL of every calibration issue of ``bucket`` on GitLab."""
    gl = make_client(gcfg)
    guard_http_debug()
    try:
        project = gl.projects.get(gcfg.project)
        out: dict[str, dict[str, Any]] = {}
        for issue in project.issues.list(labels=["b2luca", f"bucket::{bucket}"], iterator=True):
            marker = parse_marker(issue.description)
            if marker is None or marker[0] != marker_bucket(bucket) or marker[1] is None:
                continue
            if marker[1] in out and out[marker[1]]["iid"] < issue.iid:
                continue
            out[marker[1]] = {
                "checklist": parse_checklist(issue.description),
                "labels": list(issue.labels),
                "url": issue.web_url,
                "iid": issue.iid,
            }
        return out
    except (requests.RequestException, gitlab.exceptions.GitlabError) as exc:
        raise _as_transport_error(exc) from None
