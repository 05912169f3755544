"""RunDB: REST client (pagination, Bearer key) over real HTTP, CSV snapshot, input_data_filters."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from b2luca.iov import IoV
from b2luca.rundb import (RestRunDB, RunDBError, SyntheticRunDB, data_tags, flatten_run, read_snapshot,
                          select_runs, write_snapshot)


def _record(run, run_type="physics", magnet="On", quality="Good", energy="4S"):
    return {"experiment": 26, "run": run, "run_type": run_type, "beam_energy": energy,
            "time_start": f"2026-11-0{run % 9 + 1}T00:00:00Z", "time_stop": f"2026-11-0{run % 9 + 1}T01:00:00Z",
            "detectors": {"pxd": True, "svd": True, "magnet": magnet},
            "quality_expert": {"overall": quality, "svd": "Good"}, "statistics": {"lumi_recorded": 10.0 * run}}


RECORDS = [_record(1), _record(2), _record(3, run_type="cosmic", energy="No Beam"), _record(4, quality="Bad"),
           _record(5, magnet="Off"), _record(6, quality="Recoverable")]


def test_flatten_and_snapshot_round_trip(tmp_path):
    flat = flatten_run(RECORDS[0])
    assert flat["detectors.magnet"] == "On" and flat["quality_expert.overall"] == "Good"
    assert flat["statistics.lumi_recorded"] == 10.0
    frame = write_snapshot(reversed(RECORDS), tmp_path / "snap.csv")
    assert list(frame["run"]) == [1, 2, 3, 4, 5, 6]  # sorted
    back = read_snapshot(tmp_path / "snap.csv")
    assert list(back.columns[:3]) == ["experiment", "run", "run_type"]
    assert back.shape[0] == 6 and not list(tmp_path.glob(".*tmp"))
    with pytest.raises(RunDBError, match="repeat experiment/run"):
        write_snapshot([RECORDS[0], RECORDS[0]], tmp_path / "dup.csv")
    with pytest.raises(RunDBError, match="not found"):
        read_snapshot(tmp_path / "absent.csv")


def test_filters_select_the_right_runs(tmp_path):
    snap = read_snapshot_from(tmp_path)
    runs = lambda filters: list(select_runs(snap, filters)["run"])  # noqa: E731
    assert runs(["physics", "On", "Good"]) == [1, 2]
    assert runs(["physics", "On", "Good Or Recoverable"]) == [1, 2, 6]
    assert runs(["cosmic"]) == [3]
    assert runs(["NOT Off"]) == [1, 2, 3, 4, 6]
    assert runs(["Either", "4S"]) == [1, 2, 4, 5, 6]
    assert runs(["hadron_calib"]) == [1, 2, 3, 4, 5, 6]  # a data tag selects files, not runs
    assert data_tags(["hadron_calib", "physics"], default="x") == ["hadron_calib"]
    assert data_tags(["physics"], default="mumu_tight_or_highm_calib") == ["mumu_tight_or_highm_calib"]
    with pytest.raises(ValueError, match="unknown input data filter"):
        runs(["Sunny"])


def read_snapshot_from(tmp_path):
    write_snapshot(RECORDS, tmp_path / "s.csv")
    return read_snapshot(tmp_path / "s.csv")


def test_synthetic_source(tmp_path):
    (tmp_path / "runs.json").write_text(json.dumps(RECORDS))
    assert [r["run"] for r in SyntheticRunDB(tmp_path / "runs.json").runs(IoV(26, 2, 26, 4))] == [2, 3, 4]
    (tmp_path / "bad.json").write_text("[{\"run\": 1}]")
    with pytest.raises(RunDBError, match=r"bad\.json: record 0"):
        SyntheticRunDB(tmp_path / "bad.json").runs(IoV(26, 1, 26, 4))


class _RunDBHandler(BaseHTTPRequestHandler):
    key = "s3cret-rundb-key"
    page_size = 2
    seen_auth: list = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).seen_auth.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != f"Bearer {self.key}":
            self.send_response(401)
            self.end_headers()
            return
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        lo, hi = int(query["min_run"]), int(query["max_run"])
        assert query["expand"] == "true" and query["min_experiment"] == "26"
        rows = [r for r in RECORDS if lo <= r["run"] <= hi]
        page = int(query.get("page", 1))
        chunk = rows[(page - 1) * self.page_size: page * self.page_size]
        more = page * self.page_size < len(rows)
        base = f"http://127.0.0.1:{self.server.server_port}/runs/?min_experiment=26&max_experiment=26&min_run={lo}" \
               f"&max_run={hi}&expand=true&page={page + 1}"
        body = json.dumps({"results": chunk, "next": base if more else None}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def rundb_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RunDBHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_rest_client_follows_pages_with_bearer_key(rundb_server, monkeypatch):
    monkeypatch.setenv("TEST_RUNDB_KEY", _RunDBHandler.key)
    records = RestRunDB(rundb_server, "TEST_RUNDB_KEY").runs(IoV(26, 1, 26, 5))
    assert [r["run"] for r in records] == [1, 2, 3, 4, 5]  # three pages of two
    assert all(a == f"Bearer {_RunDBHandler.key}" for a in _RunDBHandler.seen_auth)


def test_rest_client_errors_never_show_the_key(rundb_server, monkeypatch):
    monkeypatch.setenv("TEST_RUNDB_KEY", "wrong-key-value")
    with pytest.raises(RunDBError) as info:
        RestRunDB(rundb_server, "TEST_RUNDB_KEY").runs(IoV(26, 1, 26, 5))
    assert "TEST_RUNDB_KEY" in str(info.value) and "wrong-key-value" not in str(info.value)
    monkeypatch.delenv("TEST_RUNDB_KEY")
    with pytest.raises(RunDBError, match="TEST_RUNDB_KEY is not set"):
        RestRunDB(rundb_server, "TEST_RUNDB_KEY").runs(IoV(26, 1, 26, 5))
    with pytest.raises(RunDBError, match="closed run range"):
        RestRunDB(rundb_server, "X").runs(IoV(26, 1, -1, -1))
