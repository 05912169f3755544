"""Integrity of a local conditions database: damaged lines and payloads are found, named and supersedable."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import uproot

from b2luca.conditions import LocalDatabase, payload_checksum
from b2luca.conditions.database import DatabaseError, PayloadError
from b2luca.conditions.payload import META_KEY
from b2luca.conditions.verify import check_payload_file, verify_database
from b2luca.iov import ExpRun, IoV

IOV = IoV(26, 1, -1, -1)
DATA = {"t0": np.arange(10, dtype=np.float64), "ok": np.array(True)}


@pytest.fixture()
def db(tmp_path):
    database = LocalDatabase(tmp_path / "prompt").create()
    database.store("CDCTimeZeros", DATA, IOV)
    database.store("BeamSpot", {"x": np.zeros(3)}, IOV)
    assert verify_database(database.path) == []
    return database


def _payload(db, name):
    return db.lookup(name, ExpRun(26, 1)).path


def test_truncated_payload_named(db):
    path = _payload(db, "CDCTimeZeros")
    path.write_bytes(path.read_bytes()[:300])
    (problem,) = verify_database(db.path)
    assert problem.startswith(f"{db.database_txt}:1: dbstore/CDCTimeZeros 1 26,1,-1,-1: {path.name}: unreadable")
    with pytest.raises(PayloadError, match=f"{path.name}: damaged payload"):
        db.read("CDCTimeZeros", ExpRun(26, 3))


def test_random_bytes_and_missing_payload(db):
    _payload(db, "CDCTimeZeros").write_bytes(np.random.default_rng(1).bytes(5000))
    _payload(db, "BeamSpot").unlink()
    problems = verify_database(db.path)
    assert len(problems) == 2
    assert "CDCTimeZeros" in problems[0] and "unreadable" in problems[0]
    assert "BeamSpot" in problems[1] and "payload file is missing" in problems[1]


def test_content_not_matching_stored_checksum(db):
    path = _payload(db, "CDCTimeZeros")
    # a well-formed ROOT file whose arrays differ from what its stored checksum says (a flipped value)
    with uproot.open(path) as source:
        meta = json.loads(str(source[META_KEY]))
    with uproot.recreate(path) as out:
        out[META_KEY] = json.dumps(meta, sort_keys=True)
        for key, value in (("t0", DATA["t0"] + np.eye(1, 10).ravel()), ("ok", np.array([True]))):
            tree = out.mktree(key, {"value": value.dtype})
            tree.extend({"value": value})
    checksum, problem = check_payload_file(path)
    assert checksum is None and "does not match the stored" in problem
    assert "does not match the stored" in verify_database(db.path)[0]


@pytest.mark.parametrize("line,expected", [
    (b"dbstore/Gar bage 1 26,1,-1,-1", "expected 'dbstore/<Name> <revision> e1,r1,e2,r2'"),
    (b"dbstore/CDC\xffTimeZeros 1 26,1,-1,-1", "not valid UTF-8 (byte 0xff at column 12)"),
    (b"dbstore/../../x 1 26,1,-1,-1", "payload name '../../x' must be an identifier"),
    (b"dbstore/X ../../y 26,1,-1,-1", "revision '../../y' must be a number"),
    (b"dbstore/X 1 26,1,-1", "26,1,-1"),
])
def test_bad_database_lines_named(db, line, expected):
    with open(db.database_txt, "ab") as handle:
        handle.write(line + b"\n")
    (problem,) = verify_database(db.path)
    assert problem.startswith(f"{db.database_txt}:3: ") and expected in problem
    with pytest.raises(DatabaseError, match="database.txt:3: "):
        db.entries()


def test_damaged_revision_superseded_by_storing_again(db):
    path = _payload(db, "CDCTimeZeros")
    path.write_bytes(b"garbage")
    entry = db.store("CDCTimeZeros", DATA, IOV)  # today's main: PayloadError from the damaged revision
    assert entry.revision == 2 and entry.path != path
    assert verify_database(db.path) == []  # the damaged line is covered by the new one
    assert payload_checksum(db.read("CDCTimeZeros", ExpRun(26, 2))) == payload_checksum(DATA)
    assert db.store("CDCTimeZeros", DATA, IOV).revision == 2  # intact now: no further revision


def test_retire_damaged_lines_keeps_everything_else(db):
    older = db.lookup("CDCTimeZeros", ExpRun(26, 1))
    db.store("CDCTimeZeros", {"t0": np.ones(10), "ok": np.array(False)}, IOV)  # revision 2, in force
    newer = db.lookup("CDCTimeZeros", ExpRun(26, 1))
    newer.path.write_bytes(b"not root")
    with open(db.database_txt, "ab") as handle:
        handle.write(b"dbstore/Gar bage \xff\n")
    before = db.database_txt.read_bytes().splitlines()
    retired = db.retire_damaged({"CDCTimeZeros", "BeamSpot"}, "damaged, retired by a test")
    assert retired == ["dbstore/CDCTimeZeros 2 26,1,-1,-1"]
    after = db.database_txt.read_bytes().splitlines()
    assert after[:2] == before[:2] and after[3:] == before[3:]
    assert after[2] == b"# damaged, retired by a test: " + before[2]
    assert verify_database(db.path) == [f"{db.database_txt}:4: not valid UTF-8 (byte 0xff at column 18)"]
    with open(db.database_txt, "wb") as handle:  # drop the garbage line again
        handle.write(b"\n".join(after[:3]) + b"\n")
    assert db.lookup("CDCTimeZeros", ExpRun(26, 1)) == older  # the earlier revision is in force again
    assert db.store("CDCTimeZeros", {"t0": np.ones(10), "ok": np.array(False)}, IOV).revision == 3
    assert verify_database(db.path) == []


def test_verified_payload_read_once_and_damage_still_seen(db, monkeypatch):
    """A payload read again by the same process comes from memory (as a copy); a file changed since, in
    place, is read and checked again."""
    from b2luca.conditions import database as database_module, verify
    from b2luca.conditions.payload import write_payload

    calls = []
    original = verify.read_checked
    monkeypatch.setattr(verify, "read_checked", lambda path: calls.append(path) or original(path))
    first = db.read("CDCTimeZeros", ExpRun(26, 1))
    first["t0"][:] = -1  # a caller changing its arrays does not change the next reader's
    again = db.read("CDCTimeZeros", ExpRun(26, 2))
    assert len(calls) == 1 and np.array_equal(again["t0"], DATA["t0"])
    path = _payload(db, "CDCTimeZeros")
    write_payload(tmp := path.with_name("other.root"), {**DATA, "t0": DATA["t0"] + 1})
    path.write_bytes(tmp.read_bytes())  # same inode, new content (same size: a later mtime, not left to the clock tick)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert np.array_equal(db.read("CDCTimeZeros", ExpRun(26, 3))["t0"], DATA["t0"] + 1)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(PayloadError, match=f"{path.name}: damaged payload"):
        db.read("CDCTimeZeros", ExpRun(26, 3))
    assert len(calls) == 3
    assert len(database_module._VERIFIED) <= database_module.VERIFIED_CACHE_FILES
