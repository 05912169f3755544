"""A small stateful server for the Belle II conditions-DB REST API subset b2luca uses (standard library only).

Written from the documented contract (``shared/belle2-interfaces.md``), independently of b2luca's client:
``<base>/v2/...`` with JSON answers and ``Authorization: Bearer <token>`` (401 otherwise);

- ``GET globalTag/{name}`` (404 if missing), ``POST globalTag/DEV`` (409 for an existing name),
  ``PUT globalTag/{name}/updateGlobalTagStatus/{state}`` enforcing the state machine (409 otherwise);
- ``POST checkPayloads`` ``[{"name","checksum"}]`` → the existing payloads;
- ``POST package/dbstore/module/{name}/payload`` (multipart: ``payloadFile`` + ``json`` with the md5
  ``checksum``; 400 when the md5 of the file differs) → the payload, revision counted per name;
- ``GET globalTag/{name}/globalTagPayloads`` → ``[{payloadId: payload, payloadIovs: [...]}]``;
- ``POST globalTagPayload/{gtId},{payloadId}/payloadIov/{e1},{r1},{e2},{r2}`` (only into OPEN tags, 409
  otherwise) → ``{"payloadIovId": ...}``.

It does not deduplicate: two uploads of the same file make two payloads, two IoV requests two IoVs —
exactly what the client must avoid.  Faults: :meth:`crash_after` handles request k and then drops the
connection without answering it and every later request (a client killed at that point),
:meth:`lose_answer` drops one answer only, and :meth:`inject` answers the next requests with a status.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

TRANSITIONS = {  # the service's global-tag state machine
    "OPEN": {"TESTING", "RUNNING"}, "TESTING": {"VALIDATED", "OPEN"}, "VALIDATED": {"PUBLISHED", "OPEN"},
    "PUBLISHED": {"INVALID"}, "RUNNING": set(), "INVALID": set(),
}


@dataclass
class FakeCondDB:
    """State, request log and fault injection; ``start()`` serves on 127.0.0.1 (any free port)."""

    token: str = "eyJ.test-conddb-token.0123456789"
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)
    payloads: dict[int, dict[str, Any]] = field(default_factory=dict)
    files: dict[int, bytes] = field(default_factory=dict)
    iovs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._next_id = 100
        self._crash_after: int | None = None
        self._lose: int | None = None
        self.handled = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeCondDB":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- faults ------------------------------------------------------------------------------------
    def crash_after(self, k: int | None) -> None:
        """Handle ``k`` more requests, drop the answer to the k-th and every later request (None: heal)."""
        with self.lock:
            self._crash_after = None if k is None else self.handled + k

    def lose_answer(self, k: int = 1) -> None:
        """Process the k-th next request but drop its answer; serve normally afterwards."""
        with self.lock:
            self._lose = self.handled + k

    def inject(self, status: int, n: int = 1) -> None:
        """Answer the next ``n`` requests with ``status``."""
        with self.lock:
            self.faults.extend([status] * n)

    # --- views for the tests -----------------------------------------------------------------------
    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def tag_iovs(self, tag: str) -> list[tuple[str, tuple[int, int, int, int], str]]:
        """(payload name, IoV, checksum) of every IoV of ``tag`` (duplicates included)."""
        gt = self.tags[tag]["globalTagId"]
        return [(self.payloads[i["payloadId"]]["basf2Module"]["name"], i["iov"],
                 self.payloads[i["payloadId"]]["checksum"]) for i in self.iovs if i["globalTagId"] == gt]

    def writes(self) -> list[tuple[str, str]]:
        return [r for r in self.requests if r[0] in ("POST", "PUT")]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeCondDB
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    def _send(self, status: int, payload: Any = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> tuple[Any, dict[str, bytes]]:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
            parts = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                     for part in msg.iter_parts()}
            return None, parts
        return (json.loads(raw) if raw else None), {}

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        fake = self.fake
        body, parts = self._body()
        path = urlsplit(self.path).path
        with fake.lock:
            fake.requests.append((method, path))
            if fake._crash_after is not None and fake.handled >= fake._crash_after:
                self.close_connection = True  # the client is gone: nothing is processed
                return
            if fake.faults:
                self._send(fake.faults.pop(0), {"message": "injected fault"})
                return
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                self._send(401, {"message": "invalid or missing token"})
                return
            if not path.startswith("/v2/"):
                self._send(404, {"message": "not found"})
                return
            status, answer = self._route(method, [unquote(p) for p in path[4:].split("/")], body, parts)
            fake.handled += 1
            if (fake._crash_after is not None and fake.handled >= fake._crash_after) or fake._lose == fake.handled:
                self.close_connection = True  # processed, but the answer never reaches the client
                fake._lose = None
                return
            self._send(status, answer)

    def _route(self, method: str, p: list[str], body: Any, parts: dict[str, bytes]) -> tuple[int, Any]:
        fake = self.fake
        if p[0] == "globalTag" and method == "POST" and p[1:] == ["DEV"]:
            name = body["name"]
            if name in fake.tags:
                return 409, {"message": f"global tag {name} exists"}
            fake.tags[name] = {"globalTagId": fake.new_id(), "name": name, "globalTagStatus": "OPEN",
                               "description": body.get("description"), "modifiedBy": body.get("modifiedBy")}
            return 200, fake.tags[name]
        if p[0] == "globalTag" and len(p) >= 2:
            tag = fake.tags.get(p[1])
            if tag is None:
                return 404, {"message": f"global tag {p[1]} not found"}
            if len(p) == 2 and method == "GET":
                return 200, tag
            if len(p) == 4 and p[2] == "updateGlobalTagStatus" and method == "PUT":
                if p[3] not in TRANSITIONS[tag["globalTagStatus"]]:
                    return 409, {"message": f"{tag['globalTagStatus']} -> {p[3]} not allowed"}
                tag["globalTagStatus"] = p[3]
                return 200, tag
            if p[2:] == ["globalTagPayloads"] and method == "GET":
                out: dict[int, dict[str, Any]] = {}
                for iov in fake.iovs:
                    if iov["globalTagId"] == tag["globalTagId"]:
                        entry = out.setdefault(iov["payloadId"], {"payloadId": fake.payloads[iov["payloadId"]],
                                                                  "payloadIovs": []})
                        e1, r1, e2, r2 = iov["iov"]
                        entry["payloadIovs"].append({"payloadIovId": iov["payloadIovId"], "expStart": e1,
                                                     "runStart": r1, "expEnd": e2, "runEnd": r2})
                return 200, list(out.values())
        if p == ["checkPayloads"] and method == "POST":
            wanted = {(x["name"], x["checksum"]) for x in body}
            return 200, [pl for pl in fake.payloads.values() if (pl["basf2Module"]["name"], pl["checksum"]) in wanted]
        if p[:3] == ["package", "dbstore", "module"] and p[4:] == ["payload"] and method == "POST":
            meta = json.loads(parts.get("json") or b"{}")
            data = parts.get("payloadFile")
            if data is None or hashlib.md5(data).hexdigest() != meta.get("checksum"):
                return 400, {"message": "payloadFile missing or its md5 differs from the checksum"}
            revision = 1 + sum(1 for pl in fake.payloads.values() if pl["basf2Module"]["name"] == p[3])
            pid = fake.new_id()
            fake.payloads[pid] = {"payloadId": pid, "basf2Module": {"name": p[3]}, "revision": revision,
                                  "checksum": meta["checksum"], "isDefault": False, "modifiedBy": "b2luca",
                                  "payloadUrl": f"dbstore/{p[3]}/dbstore_{p[3]}_rev_{revision}.root"}
            fake.files[pid] = data
            return 200, fake.payloads[pid]
        match = re.fullmatch(r"(\d+),(\d+)", p[1]) if p[0] == "globalTagPayload" and len(p) == 4 else None
        if match and p[2] == "payloadIov" and method == "POST":
            gt, pid = int(match.group(1)), int(match.group(2))
            tag = next((t for t in fake.tags.values() if t["globalTagId"] == gt), None)
            if tag is None or pid not in fake.payloads:
                return 404, {"message": "global tag or payload not found"}
            if tag["globalTagStatus"] != "OPEN":
                return 409, {"message": f"global tag {tag['name']} is {tag['globalTagStatus']}: not modifiable"}
            iov = {"payloadIovId": fake.new_id(), "globalTagId": gt, "payloadId": pid,
                   "iov": tuple(int(x) for x in p[3].split(","))}
            fake.iovs.append(iov)
            return 200, {"payloadIovId": iov["payloadIovId"]}
        return 404, {"message": f"no route {method} {'/'.join(p)}"}
