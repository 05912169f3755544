"""The conditions-DB REST client and the central backend against the stateful test server over HTTP."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from b2luca.conditions import GlobalTagState
from b2luca.conditions.backend import LocalBackend, file_md5
from b2luca.conditions.rest import CondDBClient, read_token
from b2luca.errors import ConditionsConfigError, ConditionsDBError, GlobalTagError

from .conftest import TAG, central
from .fake_conddb import FakeCondDB


def _keys(entries):
    return Counter((e.name, tuple(e.iov.as_list()), file_md5(e.path)) for e in entries)


def test_upload_checks_uploads_and_creates_iovs_once(conddb, staged):
    backend = central(conddb)
    assert backend.state() is None
    assert backend.ensure() is GlobalTagState.OPEN
    records = backend.upload(staged)
    assert [r.new_payload for r in records] == [True, True, True] and all(r.new_iov for r in records)
    assert Counter(conddb.tag_iovs(TAG)) == _keys(staged)
    assert len(conddb.payloads) == 3
    stored = {pid: data for pid, data in conddb.files.items()}
    assert sorted(stored.values()) == sorted(e.path.read_bytes() for e in staged)  # the files themselves

    writes = len(conddb.writes())
    again = backend.upload(staged)  # a rerun uploads nothing new
    assert not any(r.new_payload or r.new_iov for r in again)
    assert len(conddb.writes()) == writes + 1  # only the checkPayloads query (a POST that writes nothing)
    assert conddb.writes()[-1] == ("POST", "/v2/checkPayloads")


def _clean_request_count(staged) -> int:
    server = FakeCondDB().start()
    try:
        backend = central(server)
        backend.ensure()
        backend.upload(staged)
        return len(server.requests)
    finally:
        server.stop()


def test_killed_between_any_two_requests_then_rerun_leaves_exactly_one_payload_and_iov(staged):
    n = _clean_request_count(staged)
    assert n >= 8  # get, create, get, get, check, 3 uploads, list, 3 IoVs
    for k in range(1, n + 1):
        server = FakeCondDB().start()
        try:
            backend = central(server, retries=0)
            server.crash_after(k)  # request k is processed, its answer lost; the client dies there
            with pytest.raises(ConditionsDBError):
                backend.ensure()
                backend.upload(staged)
            server.crash_after(None)
            assert backend.ensure() is GlobalTagState.OPEN
            backend.upload(staged)
            assert Counter(server.tag_iovs(TAG)) == _keys(staged), f"killed after request {k}"
            per_checksum = Counter((p["basf2Module"]["name"], p["checksum"]) for p in server.payloads.values())
            assert max(per_checksum.values()) == 1 and len(per_checksum) == 3, f"killed after request {k}"
            assert len(server.tags) == 1
        finally:
            server.stop()


def test_transient_errors_of_reads_are_retried(conddb, staged):
    backend = central(conddb, retries=2)
    backend.ensure()
    conddb.inject(503, n=2)
    assert backend.state() is GlobalTagState.OPEN
    conddb.inject(503, n=3)
    with pytest.raises(ConditionsDBError, match="HTTP 503"):
        backend.state()


def test_state_machine_on_the_server_and_in_the_client(conddb, staged):
    backend = central(conddb)
    backend.ensure()
    with pytest.raises(GlobalTagError, match="OPEN -> PUBLISHED is not allowed"):
        backend.transition(GlobalTagState.PUBLISHED)
    backend.transition(GlobalTagState.TESTING)
    with pytest.raises(GlobalTagError, match="TESTING: only an OPEN global tag accepts payloads"):
        backend.upload(staged)
    assert conddb.iovs == []
    # the server enforces it too (a client that does not check gets a clear error, not a silent change)
    with pytest.raises(ConditionsDBError, match="HTTP 409"):
        backend.client.set_state(TAG, "INVALID")
    backend.transition(GlobalTagState.OPEN)
    assert backend.state() is GlobalTagState.OPEN
    # the answer to the state change is lost and the retried PUT refused (409): the state that counts is the
    # one on the server, so the transition succeeds
    conddb.lose_answer(2)  # 1: GET the state, 2: PUT
    backend.transition(GlobalTagState.TESTING)
    assert conddb.tags[TAG]["globalTagStatus"] == "TESTING"
    assert [r for r in conddb.requests if r[0] == "PUT"][-2:] == [("PUT", f"/v2/globalTag/{TAG}/updateGlobalTagStatus/TESTING")] * 2


def test_token_from_env_or_file_and_never_in_messages(conddb, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("B2LUCA_TEST_CONDDB", raising=False)
    with pytest.raises(ConditionsConfigError, match="B2LUCA_TEST_CONDDB"):
        read_token("B2LUCA_TEST_CONDDB", None)
    monkeypatch.setenv("B2LUCA_TEST_CONDDB", conddb.token)
    assert read_token("B2LUCA_TEST_CONDDB", None) == conddb.token
    token_file = tmp_path / "token"
    token_file.write_text(conddb.token + "\n")
    assert read_token(None, token_file) == conddb.token
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConditionsConfigError, match="empty"):
        read_token(None, tmp_path / "empty")

    caplog.set_level(logging.DEBUG)
    wrong = CondDBClient(conddb.url, "wrong-" + conddb.token, retries=0)
    with pytest.raises(ConditionsDBError, match="HTTP 401") as info:
        wrong.global_tag(TAG)
    assert conddb.token not in str(info.value) and conddb.token not in repr(wrong)
    assert conddb.token not in caplog.text


def test_local_backend_has_the_same_lifecycle(tmp_path, staged):
    backend = LocalBackend(tmp_path / "local", "prompt_local")
    assert backend.state() is None and backend.ensure() is GlobalTagState.OPEN
    records = backend.upload(staged)
    assert all(r.new_payload for r in records)
    assert not any(r.new_payload for r in backend.upload(staged))  # idempotent
    backend.transition(GlobalTagState.TESTING)
    with pytest.raises(GlobalTagError, match="only an OPEN global tag accepts payloads"):
        backend.upload(staged[:1])
    with pytest.raises(GlobalTagError, match="TESTING -> PUBLISHED is not allowed"):
        backend.transition(GlobalTagState.PUBLISHED)
    assert '"TESTING"' in (tmp_path / "local" / "prompt_local" / "globaltag.json").read_text()
