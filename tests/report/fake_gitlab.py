"""A small stateful GitLab REST v4 server for the tests (standard library only).

Behaves like GitLab CE for what b2luca uses: projects (by id or URL-encoded path), issues (list with
``labels``/``state`` filters — default state ``all``, valid values ``opened``/``closed``/``all``,
case-sensitive labels — create, get, update with ``add_labels``/``remove_labels``/``labels``/
``state_event``/``assignee_ids``; one assignee as on CE), notes, users by username, project uploads,
labels (auto-created when used), pagination (``X-Next-Page``, ``Link``), ``PRIVATE-TOKEN`` auth (401),
404 for missing projects, and injected faults: queued 429 (with ``Retry-After``) / 5xx answers and a
"down" mode (listener closed, open connections dropped).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

ISSUE_STATES = {"opened", "closed", "all"}


@dataclass
class Request:
    """One request as the server saw it."""

    time: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int = 0
    body: bytes = b""


@dataclass
class FakeGitLab:
    """State + fault injection; ``start()`` serves it on 127.0.0.1 (port 0 = any free port)."""

    token: str = "glpat-test-0123456789abcdef"
    project_path: str = "calib/bucket-demo"
    users: dict[str, int] = field(default_factory=lambda: {"alice": 11, "bob": 12, "carol": 13})
    issues: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    faults: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    dropping: bool = False
    project_id: int = 7
    port: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._next_id = 1000

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeGitLab":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.dropping = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go down: stop listening (connection refused) and drop requests on kept-alive connections."""
        self.dropping = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def inject(self, status: int, n: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (e.g. 429 with Retry-After, 503)."""
        with self.lock:
            self.faults.extend([(status, dict(headers or {}))] * n)

    # ----------------------------------------------------------------- helpers
    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def project_json(self) -> dict[str, Any]:
        return {
            "id": self.project_id,
            "name": self.project_path.rsplit("/", 1)[-1],
            "path": self.project_path.rsplit("/", 1)[-1],
            "path_with_namespace": self.project_path,
            "web_url": f"{self.url}/{self.project_path}",
            "default_branch": "main",
        }

    def issue_by_iid(self, iid: int) -> dict[str, Any] | None:
        return next((i for i in self.issues if i["iid"] == iid), None)

    def user_json(self, uid: int) -> dict[str, Any]:
        name = next(n for n, i in self.users.items() if i == uid)
        return {"id": uid, "username": name, "name": name.title(), "state": "active",
                "web_url": f"{self.url}/{name}"}

    def touch_labels(self, names: list[str]) -> None:
        for n in names:
            if n not in self.labels:
                self.labels[n] = {"id": self.new_id(), "name": n, "color": "#6699cc", "description": None}

    def real_requests(self) -> list[Request]:
        return [r for r in self.requests if r.status]


def _split_labels(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        items = value
    else:
        items = str(value).split(",")
    return [s.strip() for s in items if s.strip()]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGitLab
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per response (no Nagle/delayed-ACK stalls)
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    # ----------------------------------------------------------------- plumbing
    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self._rec.status = status

    def _paginate(self, items: list[Any], query: dict[str, list[str]]) -> None:
        per_page = min(100, max(1, int(query.get("per_page", ["20"])[0])))
        page = max(1, int(query.get("page", ["1"])[0]))
        total = len(items)
        pages = max(1, -(-total // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        base = f"{self.fake.url}{urlsplit(self.path).path}"

        def link(p: int) -> str:
            q = {k: v[0] for k, v in query.items()}
            q.update(page=str(p), per_page=str(per_page))
            return f"{base}?{urlencode(q)}"

        headers = {"X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(total),
                   "X-Total-Pages": str(pages), "X-Next-Page": str(page + 1) if page < pages else "",
                   "X-Prev-Page": str(page - 1) if page > 1 else ""}
        links = []
        if page < pages:
            links.append(f'<{link(page + 1)}>; rel="next"')
        if page > 1:
            links.append(f'<{link(page - 1)}>; rel="prev"')
        links += [f'<{link(1)}>; rel="first"', f'<{link(pages)}>; rel="last"']
        headers["Link"] = ", ".join(links)
        self._send(200, chunk, headers)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        self._rec.body = raw
        ctype = self.headers.get("Content-Type", "")
        if not raw:
            return {}
        if ctype.startswith("application/json"):
            return json.loads(raw)
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
            out: dict[str, Any] = {}
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                out[name] = {"filename": part.get_filename(), "data": part.get_payload(decode=True)}
            return out
        return {k: v[0] for k, v in parse_qs(raw.decode()).items()}

    def _handle(self, method: str) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        self._rec = Request(time.time(), method, split.path, query, {k: v for k, v in self.headers.items()})
        if fake.dropping:
            self.close_connection = True
            return
        with fake.lock:
            fake.requests.append(self._rec)
            body = self._body() if method in ("POST", "PUT") else {}
            if fake.faults:
                status, headers = fake.faults.pop(0)
                self._send(status, {"message": f"{status} injected"}, headers)
                return
            if self.headers.get("PRIVATE-TOKEN") != fake.token:
                self._send(401, {"message": "401 Unauthorized"})
                return
            self._route(method, split.path, query, body)

    do_GET = lambda self: self._handle("GET")  # noqa: E731
    do_POST = lambda self: self._handle("POST")  # noqa: E731
    do_PUT = lambda self: self._handle("PUT")  # noqa: E731

    # ----------------------------------------------------------------- API
    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> None:
        fake = self.fake
        parts = [unquote(p) for p in path.split("/") if p]
        if parts[:2] != ["api", "v4"]:
            return self._send(404, {"message": "404 Not Found"})
        parts = parts[2:]
        if parts == ["users"] and method == "GET":
            name = query.get("username", [""])[0]
            hits = [fake.user_json(uid) for n, uid in fake.users.items() if n.lower() == name.lower()]
            return self._paginate(hits, query)
        if len(parts) < 2 or parts[0] != "projects":
            return self._send(404, {"message": "404 Not Found"})
        if parts[1] not in (str(fake.project_id), fake.project_path):
            return self._send(404, {"message": "404 Project Not Found"})
        rest = parts[2:]
        if not rest and method == "GET":
            return self._send(200, fake.project_json())
        if rest == ["labels"]:
            if method == "GET":
                return self._paginate(list(fake.labels.values()), query)
            fake.touch_labels([body["name"]])
            return self._send(201, fake.labels[body["name"]])
        if rest == ["uploads"] and method == "POST":
            f = body.get("file")
            if not f or not f.get("filename"):
                return self._send(400, {"message": "file is missing"})
            secret = secrets.token_hex(16)
            name = f["filename"]
            url = f"/uploads/{secret}/{quote(name)}"
            is_image = name.lower().rsplit(".", 1)[-1] in {"png", "jpg", "jpeg", "gif", "svg"}
            alt = name.rsplit(".", 1)[0]
            up = {"id": fake.new_id(), "alt": alt, "url": url,
                  "full_path": f"/-/project/{fake.project_id}{url}",
                  "markdown": f"![{alt}]({url})" if is_image else f"[{alt}]({url})", "data": f["data"]}
            fake.uploads.append(up)
            return self._send(201, {k: v for k, v in up.items() if k != "data"})
        if rest and rest[0] == "issues":
            return self._issues(method, rest[1:], query, body)
        return self._send(404, {"message": "404 Not Found"})

    def _issues(self, method: str, rest: list[str], query: dict[str, list[str]], body: Any) -> None:
        fake = self.fake
        if not rest:
            if method == "GET":
                state = query.get("state", ["all"])[0]
                if state not in ISSUE_STATES:
                    return self._send(400, {"error": "state does not have a valid value"})
                want = _split_labels(query.get("labels", [None])[0])
                hits = [i for i in fake.issues if (state == "all" or i["state"] == state)
                        and all(lab in i["labels"] for lab in want)]
                hits.sort(key=lambda i: -i["iid"])  # GitLab: created_at desc
                return self._paginate(hits, query)
            if method == "POST":
                if not body.get("title"):
                    return self._send(400, {"message": "title is missing"})
                iid = max((i["iid"] for i in fake.issues), default=0) + 1
                now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
                issue = {"id": fake.new_id(), "iid": iid, "project_id": fake.project_id, "title": body["title"],
                         "description": body.get("description") or "", "state": "opened", "labels": [],
                         "assignees": [], "assignee": None, "created_at": now, "updated_at": now,
                         "web_url": f"{fake.url}/{fake.project_path}/-/issues/{iid}",
                         "author": {"id": 1, "username": "b2luca-bot"}}
                self._apply(issue, body)
                fake.issues.append(issue)
                fake.notes[iid] = []
                return self._send(201, issue)
            return self._send(405, {"message": "405 Method Not Allowed"})
        iid = int(rest[0])
        issue = fake.issue_by_iid(iid)
        if issue is None:
            return self._send(404, {"message": "404 Issue Not Found"})
        if len(rest) == 1:
            if method == "GET":
                return self._send(200, issue)
            if method == "PUT":
                self._apply(issue, body)
                issue["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
                return self._send(200, issue)
        if rest[1:] == ["notes"]:
            if method == "GET":
                return self._paginate(sorted(fake.notes[iid], key=lambda n: -n["id"]), query)
            if method == "POST":
                if not body.get("body"):
                    return self._send(400, {"message": "body is missing"})
                note = {"id": fake.new_id(), "body": body["body"], "system": False, "noteable_iid": iid,
                        "author": {"id": 1, "username": "b2luca-bot"},
                        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
                fake.notes[iid].append(note)
                return self._send(201, note)
        return self._send(404, {"message": "404 Not Found"})

    def _apply(self, issue: dict[str, Any], body: dict[str, Any]) -> None:
        fake = self.fake
        for key in ("title", "description"):
            if key in body and body[key] is not None:
                issue[key] = body[key]
        if "labels" in body:
            issue["labels"] = _split_labels(body["labels"])
        for lab in _split_labels(body.get("add_labels")):
            if lab not in issue["labels"]:
                issue["labels"].append(lab)
        drop = set(_split_labels(body.get("remove_labels")))
        issue["labels"] = [lab for lab in issue["labels"] if lab not in drop]
        fake.touch_labels(issue["labels"])
        if "assignee_ids" in body:
            ids = [int(i) for i in body["assignee_ids"] or [] if int(i) in fake.users.values()][:1]  # CE: one
            issue["assignees"] = [fake.user_json(i) for i in ids]
            issue["assignee"] = issue["assignees"][0] if ids else None
        ev = body.get("state_event")
        if ev == "close":
            issue["state"] = "closed"
        elif ev == "reopen":
            issue["state"] = "opened"
