"""A client of the Belle II conditions-database REST API (v2), the subset b2luca needs.

Paths, fields and states follow what ``b2conditionsdb`` uses (see ``shared/belle2-interfaces.md``):
``GET globalTag/{name}``, ``POST globalTag/DEV``, ``PUT globalTag/{name}/updateGlobalTagStatus/{state}``,
``POST checkPayloads``, ``POST package/dbstore/module/{name}/payload`` (multipart), ``GET
globalTag/{name}/globalTagPayloads`` and ``POST globalTagPayload/{gtId},{payloadId}/payloadIov/{e1},{r1},{e2},{r2}``.
Not confirmed by a public source here (guesses, kept in this one module): the state-change path, the
multipart field names (``payloadFile``, ``json``), the answer of ``checkPayloads`` (the existing payload
objects) and the nesting of ``globalTagPayloads`` (``payloadId`` object + ``payloadIovs`` with
``expStart, runStart, expEnd, runEnd``).

Transport: one :class:`requests.Session` with urllib3's :class:`~urllib3.util.retry.Retry` mounted, so
connection failures, 429 and 5xx answers are retried with exponential back-off (``Retry-After`` honoured).
Only idempotent methods (GET, PUT, HEAD) are retried after the request reached the server; a POST is
retried only when it never left this machine (connect errors) — a POST whose answer was lost is made
safe by the caller, who asks the server what exists before writing again (see :mod:`.central`).

The token (a JWT at Belle II) is read from a file or an environment variable that the YAML names and is
sent as ``Authorization: Bearer``; it never appears in a message, a log line or an exception.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .. import __version__
from ..errors import ConditionsConfigError, ConditionsDBError
from ..iov import IoV

log = logging.getLogger("b2luca.conditions.rest")

RETRY_STATUS = (429, 500, 502, 503, 504)


def read_token(token_env: str | None, token_file: "str | os.PathLike[str] | None") -> str:
    """The token from ``token_file`` (first line) or the environment variable ``token_env``.

    The error names the variable or file, never the value.
    """
    if token_file:
        path = Path(token_file).expanduser()
        try:
            lines = path.read_text().strip().splitlines()
        except OSError as exc:
            raise ConditionsConfigError(f"conditions.central.token_file {path}: cannot read it ({exc.strerror})") \
                from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConditionsConfigError(f"conditions.central.token_file {path}: the file is empty")
        return token
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise ConditionsConfigError(f"conditions.central.token_env names environment variable {token_env!r}, "
                                        "which is not set or empty")
        return token
    raise ConditionsConfigError("conditions.central needs token_env (an environment variable name) or token_file "
                                "(a file holding the token); the token itself never goes into the YAML")


class CondDBClient:
    """Requests to ``<url>/v2/...`` with JSON answers, bounded retries and a bearer token."""

    def __init__(self, url: str, token: str, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5) -> None:
        self.base = url.rstrip("/") + "/v2/"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": f"b2luca/{__version__}",
                                     "Authorization": f"Bearer {token}"})
        retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
                      status_forcelist=RETRY_STATUS, allowed_methods=frozenset({"GET", "PUT", "HEAD"}),
                      respect_retry_after_header=True, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def from_config(cls, central: Any) -> "CondDBClient":
        """A client for ``conditions.central`` of the bucket YAML (url, token_env/token_file, timeout, retries)."""
        token = read_token(getattr(central, "token_env", None), getattr(central, "token_file", None))
        return cls(central.url, token, timeout=float(central.timeout), retries=int(central.retries))

    def __repr__(self) -> str:  # never the headers: they hold the token
        return f"CondDBClient({self.base!r})"

    # --- the HTTP layer -------------------------------------------------------------------------
    def request(self, method: str, path: str, ok_missing: bool = False, **kwargs: Any) -> Any:
        """One request; the decoded JSON answer (None for an empty body, or a 404 with ``ok_missing``)."""
        url = self.base + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ConditionsDBError(f"conditions DB {method} {url}: {type(exc).__name__} "
                                    f"({_short(str(exc))})") from None
        if response.status_code == 404 and ok_missing:
            return None
        if response.status_code >= 400:
            raise ConditionsDBError(f"conditions DB {method} {url}: HTTP {response.status_code} "
                                    f"({_short(_message(response))})")
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ConditionsDBError(f"conditions DB {method} {url}: the answer is not JSON") from None

    # --- global tags ----------------------------------------------------------------------------
    def global_tag(self, name: str) -> dict[str, Any] | None:
        """``GET globalTag/{name}``: the tag (globalTagId, name, globalTagStatus ...), None if missing."""
        return self.request("GET", f"globalTag/{_enc(name)}", ok_missing=True)

    def create_global_tag(self, name: str, description: str, modified_by: str = "b2luca") -> dict[str, Any]:
        """``POST globalTag/DEV``: a new (OPEN) tag."""
        return self.request("POST", "globalTag/DEV", json={"name": name, "description": description,
                                                           "modifiedBy": modified_by, "isDefault": False})

    def set_state(self, name: str, state: str) -> None:
        """``PUT globalTag/{name}/updateGlobalTagStatus/{state}`` (the server enforces the transitions)."""
        self.request("PUT", f"globalTag/{_enc(name)}/updateGlobalTagStatus/{_enc(state)}")

    # --- payloads and IoVs ----------------------------------------------------------------------
    def check_payloads(self, items: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """``POST checkPayloads``: ``{(name, md5): payloadId}`` of the payloads that already exist."""
        body = [{"name": name, "checksum": checksum} for name, checksum in items]
        answer = self.request("POST", "checkPayloads", json=body) or []
        return {(p["basf2Module"]["name"], p["checksum"]): int(p["payloadId"]) for p in answer}

    def upload_payload(self, name: str, path: Path, checksum: str) -> int:
        """``POST package/dbstore/module/{name}/payload`` (multipart: the file + JSON); the new payloadId."""
        with open(path, "rb") as handle:
            files = {"json": (None, json.dumps({"checksum": checksum, "isDefault": False}), "application/json"),
                     "payloadFile": (Path(path).name, handle, "application/x-root")}
            answer = self.request("POST", f"package/dbstore/module/{_enc(name)}/payload", files=files)
        return int(answer["payloadId"])

    def global_tag_payloads(self, name: str) -> list[dict[str, Any]]:
        """``GET globalTag/{name}/globalTagPayloads``: flattened to ``{payloadIovId, payloadId, name, checksum,
        iov}`` per IoV."""
        out = []
        for entry in self.request("GET", f"globalTag/{_enc(name)}/globalTagPayloads") or []:
            payload = entry["payloadId"]
            for iov in entry.get("payloadIovs") or []:
                out.append({"payloadIovId": int(iov["payloadIovId"]), "payloadId": int(payload["payloadId"]),
                            "name": payload["basf2Module"]["name"], "checksum": payload["checksum"],
                            "iov": IoV(int(iov["expStart"]), int(iov["runStart"]), int(iov["expEnd"]),
                                       int(iov["runEnd"]))})
        return out

    def create_iov(self, tag_id: int, payload_id: int, iov: IoV) -> int:
        """``POST globalTagPayload/{gtId},{payloadId}/payloadIov/{e1},{r1},{e2},{r2}``: the new payloadIovId."""
        e1, r1, e2, r2 = iov.as_list()
        answer = self.request("POST", f"globalTagPayload/{tag_id},{payload_id}/payloadIov/{e1},{r1},{e2},{r2}")
        return int(answer["payloadIovId"])


def _enc(part: str) -> str:
    return quote(str(part), safe="")


def _message(response: requests.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        return response.text or response.reason or ""
    if isinstance(document, dict):
        return str(document.get("message") or document.get("error") or document)
    return str(document)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"
