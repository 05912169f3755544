"""Atomic writes: the target is either the old file or the complete new one; no temporary file is left."""

import json
import os
import stat

import pytest

from b2luca.atomic import atomic_path, write_json_atomic, write_text_atomic


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
