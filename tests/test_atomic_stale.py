"""Stale temporary files of atomic_path (left by kill -9) are removed on start: only ours, only old ones."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from b2luca.atomic import PROCESS_START, remove_stale_temp_files, stale_temp_files
from b2luca.cli import main

from bucket_helpers import make_bucket


def _touch(path, age_s: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    stamp = PROCESS_START - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_only_our_old_temp_files_are_removed(tmp_path):
    ours = _touch(tmp_path / "data" / ".raw_r00001_f0.root.k2j_9x0a.tmp", 60)
    deep = _touch(tmp_path / "conditions" / "prompt" / ".database.txt.abcdefgh.tmp", 3600)
    young = _touch(tmp_path / "data" / ".raw_r00002_f0.root.zz0011aa.tmp", -5)  # newer than this process
    others = [_touch(tmp_path / "data" / name, 60) for name in
              (".notes.tmp", "raw.root", ".raw.root.ABCDEFGH.tmp", ".raw.root.abc.tmp", "x.root.abcdefgh.tmp")]
    assert stale_temp_files([tmp_path]) == sorted([ours, deep])
    assert remove_stale_temp_files([tmp_path, tmp_path / "data"]) == sorted([ours, deep])
    assert not ours.exists() and not deep.exists() and young.exists() and all(p.exists() for p in others)


def test_simulate_after_kill_9_removes_the_leftover(tmp_path, capsys):
    config = make_bucket(tmp_path, events={"cosmic_calib": 5, "mumu_tight_or_highm_calib": 5, "hadron_calib": 5,
                                           "bhabha_all_calib": 5, "random_calib": 5})
    target = tmp_path / "data" / "raw_r00003.root"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from b2luca.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"half a ROOT file")
            os.kill(os.getpid(), signal.SIGKILL)
        """)])
    assert killed.returncode == -9
    (leftover,) = list((tmp_path / "data").glob(".raw_r00003.root.*.tmp"))
    old = PROCESS_START - 60
    os.utime(leftover, (old, old))  # the killed run started before this process
    assert main(["simulate", str(config)]) == 0
    out = capsys.readouterr().out
    assert "removed 1 stale temporary file(s) left by an interrupted run" in out and leftover.name in out
    assert not leftover.exists()
    assert not list(tmp_path.rglob("*.tmp"))
