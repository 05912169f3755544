"""Local conditions database: database.txt, payload files, chain look-up, immutability, global-tag states."""

import numpy as np
import pytest

from b2luca.conditions import (DatabaseChain, DatabaseError, GlobalTag, GlobalTagError, GlobalTagState,
                               LocalDatabase, copy_payloads, parse_database_txt, read_payload, write_payload)
from b2luca.iov import ExpRun, IoV


def test_payload_round_trip_exact(tmp_path):
    data = {
        "offsets": np.random.default_rng(1).normal(size=(8, 6)),
        "ids": np.arange(8, dtype=np.int32),
        "mask": np.array([True, False, True]),
        "scalar": np.float32(1.5),
        "empty": np.zeros(0, dtype=np.uint16),
        "cube": np.arange(24, dtype=np.int64).reshape(2, 3, 4).transpose(2, 0, 1),
    }
    write_payload(tmp_path / "p.root", data)
    import uproot
    with uproot.open(tmp_path / "p.root") as source:  # constants as named arrays in TTrees
        assert {k.split(";")[0]: source[k].classname for k in source.keys()} == {
            **{key: "TTree" for key in data}, "b2luca_meta": "TObjString"}
    back = read_payload(tmp_path / "p.root")
    assert set(back) == set(data)
    for key, value in data.items():
        value = np.asarray(value)
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), key


def test_database_txt_parsing_and_last_line_wins(tmp_path):
    db = LocalDatabase(tmp_path / "db").create()
    first = db.store("BeamSpot", {"x": np.array([1.0])}, IoV(0, 0, -1, -1))
    second = db.store("BeamSpot", {"x": np.array([2.0])}, IoV(26, 5, 26, 8))
    assert (first.revision, second.revision) == (1, 2)
    text = (tmp_path / "db" / "database.txt").read_text().splitlines()
    assert text == ["dbstore/BeamSpot 1 0,0,-1,-1", "dbstore/BeamSpot 2 26,5,26,8"]
    assert (tmp_path / "db" / "dbstore_BeamSpot_rev_2.root").is_file()
    assert db.read("BeamSpot", ExpRun(26, 6))["x"][0] == 2.0  # last line wins inside its IoV
    assert db.read("BeamSpot", ExpRun(26, 4))["x"][0] == 1.0
    assert db.lookup("Other", ExpRun(26, 6)) is None
    # A hand-written file with comments and blank lines parses the same way.
    (tmp_path / "db" / "database.txt").write_text(
        "# comment line\n\ndbstore/BeamSpot 2 26,5,26,8  # trailing\ndbstore/BeamSpot 1 0,0,-1,-1\n")
    assert db.read("BeamSpot", ExpRun(26, 6))["x"][0] == 1.0  # now the always-line is last


def test_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "database.txt").write_text("dbstore/A 1 0,0,-1,-1\nnot a line\n")
    with pytest.raises(DatabaseError, match=r"database\.txt:2"):
        parse_database_txt(tmp_path / "database.txt")


def test_database_txt_is_parsed_once_per_version(tmp_path, monkeypatch):
    """Look-ups reuse the parsed database.txt while the file is unchanged (issue 15: a production task looks
    up every constant of every run); a new revision, an edit in place and a bad line are seen at once."""
    import os

    from b2luca.conditions import database

    db = LocalDatabase(tmp_path / "db").create()
    db.store("BeamSpot", {"x": np.array([1.0])}, IoV(0, 0, -1, -1))
    parses = []
    original = database.parse_database_txt
    monkeypatch.setattr(database, "parse_database_txt", lambda path: parses.append(path) or original(path))
    for _ in range(3):
        assert db.lookup("BeamSpot", ExpRun(26, 1)).revision == 1
    assert len(parses) <= 1
    db.store("BeamSpot", {"x": np.array([2.0])}, IoV(26, 1, 26, 1))  # atomic rewrite: a new version
    assert db.lookup("BeamSpot", ExpRun(26, 1)).revision == 2
    txt = tmp_path / "db" / "database.txt"
    stat = txt.stat()
    with open(txt, "r+") as handle:  # in place, same size: only the times tell
        handle.write(handle.read().replace("26,1,26,1", "26,2,26,2"))
    os.utime(txt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert db.lookup("BeamSpot", ExpRun(26, 1)).revision == 1
    txt.write_text(txt.read_text() + "not a line\n")
    for _ in range(2):  # a bad file is not kept: it raises every time
        with pytest.raises(DatabaseError, match=r"database\.txt:\d+: expected .*not a line"):
            db.lookup("BeamSpot", ExpRun(26, 1))


def test_immutability_new_revision_and_noop(tmp_path):
    db = LocalDatabase(tmp_path / "db")
    iov = IoV(26, 1, -1, -1)
    a = db.store("CDCTimeZeros", {"t0": np.array([1.0, 2.0])}, iov)
    mtime = a.path.stat().st_mtime_ns
    again = db.store("CDCTimeZeros", {"t0": np.array([1.0, 2.0])}, iov)
    assert again == a and len(db.entries()) == 1  # identical content for the same IoV: no-op
    b = db.store("CDCTimeZeros", {"t0": np.array([1.0, 2.5])}, iov)
    assert b.revision == 2 and a.path.stat().st_mtime_ns == mtime  # the old file is untouched
    assert read_payload(a.path)["t0"][1] == 2.0
    # Same content as revision 1 but revision 2 is in force: storing it is a change, so a new revision.
    c = db.store("CDCTimeZeros", {"t0": np.array([1.0, 2.0])}, iov)
    assert c.revision == 3
    # A payload file left without its line (writer killed in between) still reserves its revision.
    write_payload(tmp_path / "db" / "dbstore_CDCTimeZeros_rev_4.root", {"t0": np.array([9.0])})
    assert db.store("CDCTimeZeros", {"t0": np.array([7.0])}, iov).revision == 5


def test_chain_first_match_wins(tmp_path):
    prompt, nominal = LocalDatabase(tmp_path / "prompt"), LocalDatabase(tmp_path / "nominal")
    nominal.store("BeamSpot", {"x": np.array([0.0])}, IoV.always())
    nominal.store("ECLGains", {"g": np.ones(3)}, IoV.always())
    prompt.store("BeamSpot", {"x": np.array([0.5])}, IoV(26, 1, -1, -1))
    chain = DatabaseChain([prompt, nominal])
    assert chain.read("BeamSpot", ExpRun(26, 3))["x"][0] == 0.5
    assert chain.read("BeamSpot", ExpRun(25, 3))["x"][0] == 0.0  # outside the prompt IoV: falls through
    assert chain.lookup("ECLGains", ExpRun(26, 3)).path.parent == nominal.path
    assert chain.read_or_none("Missing", ExpRun(26, 3)) is None
    with pytest.raises(KeyError):
        chain.read("Missing", ExpRun(26, 3))


def test_global_tag_state_machine(tmp_path):
    gt = GlobalTag.create(tmp_path, "prompt_demo")
    assert gt.state is GlobalTagState.OPEN
    gt.store("A", {"v": np.array([1])}, IoV.always())
    with pytest.raises(GlobalTagError, match="OPEN -> VALIDATED is not allowed"):
        gt.transition("VALIDATED")
    gt.transition("TESTING")
    with pytest.raises(GlobalTagError, match="only an OPEN global tag accepts payloads"):
        gt.store("A", {"v": np.array([2])}, IoV.always())
    gt.transition("OPEN")
    gt.transition("TESTING")
    gt.transition("VALIDATED")
    gt.transition("PUBLISHED")
    with pytest.raises(GlobalTagError):
        gt.transition("OPEN")
    gt.transition("INVALID")
    for state in GlobalTagState:
        with pytest.raises(GlobalTagError):
            gt.transition(state)
    assert [h["to"] for h in GlobalTag.open(tmp_path, "prompt_demo").history()] == [
        "TESTING", "OPEN", "TESTING", "VALIDATED", "PUBLISHED", "INVALID"]
    running = GlobalTag.create(tmp_path, "running")
    running.transition("RUNNING")
    with pytest.raises(GlobalTagError):
        running.transition("OPEN")
    with pytest.raises(GlobalTagError, match="does not exist"):
        GlobalTag.open(tmp_path, "nope")


def test_copy_payloads_sets_iov(tmp_path):
    staging = GlobalTag.create(tmp_path, "staging_pxd")
    staging.store("PXDMasks", {"hot": np.array([3, 7])}, IoV.always())
    prompt = GlobalTag.create(tmp_path, "prompt")
    bucket = IoV(26, 1, -1, -1)
    (entry,) = copy_payloads(staging, prompt, ["PXDMasks"], bucket)
    assert entry.iov == bucket and entry.revision == 1
    assert list(prompt.read("PXDMasks", ExpRun(26, 2))["hot"]) == [3, 7]
    assert prompt.lookup("PXDMasks", ExpRun(25, 2)) is None
    assert copy_payloads(staging, prompt, ["PXDMasks"], bucket)[0].revision == 1  # rerun: no new revision
    with pytest.raises(GlobalTagError, match="staging_pxd has no payload SVDNoise"):
        copy_payloads(staging, prompt, ["SVDNoise"], bucket)


def test_create_writes_an_empty_database_without_fsync_and_keeps_an_existing_one(tmp_path, monkeypatch):
    import numpy as np

    from b2luca.conditions import LocalDatabase
    from b2luca.iov import IoV

    fsyncs: list[int] = []
    monkeypatch.setattr("b2luca.atomic.os.fsync", fsyncs.append)
    db = LocalDatabase(tmp_path / "out").create()
    assert db.database_txt.read_text() == "" and fsyncs == []  # an empty file is the same after a power loss
    entry = db.store("X", {"v": np.ones(2)}, IoV(0, 0, -1, -1))
    assert len(fsyncs) == 1  # a stored line is durable
    LocalDatabase(tmp_path / "out").create()  # a second create leaves the stored line alone
    assert [e.name for e in LocalDatabase(tmp_path / "out").entries()] == [entry.name]
