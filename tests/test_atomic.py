"""Atomic writes: the target is either the old file or the complete new one; no temporary file is left."""

import json
import os
import stat

import pytest

from b2luca.atomic import atomic_path, write_json_atomic, write_json_atomic_many, write_text_atomic


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "result.json"
    write_json_atomic(target, {"status": "success"})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"status": "half')  # a writer dies halfway
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"status": "success"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664)])
def test_new_file_in_new_directory_follows_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "a" / "b" / "database.txt", "dbstore/X 1 0,0,-1,-1\n")
    finally:
        os.umask(old)
    path = tmp_path / "a" / "b" / "database.txt"
    assert path.read_text() == "dbstore/X 1 0,0,-1,-1\n"
    assert stat.S_IMODE(path.stat().st_mode) == mode  # as open() would make it, not mkstemp's private 0600


def _fsyncs(monkeypatch) -> list[int]:
    """Record the descriptors b2luca.atomic fsyncs (the real fsync still runs)."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr("b2luca.atomic.os.fsync", fsync)
    return calls


def test_durable_false_writes_atomically_without_fsync(tmp_path, monkeypatch):
    calls = _fsyncs(monkeypatch)
    write_json_atomic(tmp_path / "caf_config.json", {"a": 1}, durable=False)
    assert calls == []
    write_json_atomic(tmp_path / "result.json", {"a": 2})  # the default stays durable
    assert len(calls) == 1
    assert json.loads((tmp_path / "caf_config.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caf_config.json", "result.json"]


def test_many_writes_every_file_fsyncs_each_before_any_rename(tmp_path, monkeypatch):
    targets = [tmp_path / "r1" / "m.json", tmp_path / "r2" / "m.json", tmp_path / "r3" / "m.json"]
    targets[1].parent.mkdir()
    targets[1].write_text('{"old": true}\n')
    order: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        order.append("fsync")
        real_fsync(fd)

    def replace(src, dst):
        order.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr("b2luca.atomic.os.fsync", fsync)
    monkeypatch.setattr("b2luca.atomic.os.replace", replace)
    write_json_atomic_many([(path, {"run": i}) for i, path in enumerate(targets)], indent=1)
    assert order == ["fsync"] * 3 + ["rename"] * 3
    assert [json.loads(p.read_text()) for p in targets] == [{"run": 0}, {"run": 1}, {"run": 2}]
    assert targets[0].read_text() == json.dumps({"run": 0}, indent=1) + "\n"
    for path in targets:
        assert sorted(p.name for p in path.parent.iterdir()) == ["m.json"]


def test_many_failure_before_the_renames_keeps_every_old_file_and_no_temp(tmp_path, monkeypatch):
    targets = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in targets:
        path.write_text('{"old": true}\n')

    def failing_fsync(fd):
        raise OSError("disk gone")

    monkeypatch.setattr("b2luca.atomic.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="disk gone"):
        write_json_atomic_many([(path, {"new": True}) for path in targets])
    assert [json.loads(p.read_text()) for p in targets] == [{"old": True}, {"old": True}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_many_with_an_unserialisable_document_writes_nothing(tmp_path):
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        write_json_atomic_many([(tmp_path / "a.json", {"ok": 1}), (tmp_path / "b.json", circular)])
    assert list(tmp_path.iterdir()) == []  # the first file's temporary file is removed too
