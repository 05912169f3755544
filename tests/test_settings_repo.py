"""Settings repository: real git repositories (a local bare repo as the remote)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from b2luca.settings_repo import SettingsRepoError, pull_settings

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1"}


def git(cwd: Path, *args: str) -> str:
    import os

    env = dict(os.environ, **GIT_ENV)
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit_file(work: Path, rel: str, text: str, msg: str) -> str:
    p = work / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    git(work, "add", rel)
    git(work, "commit", "-q", "-m", msg)
    return git(work, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """(bare repo, a working clone of it that pushes to it)."""
    bare = tmp_path / "settings.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    work = tmp_path / "author"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    commit_file(work, "bucket.yaml", "bucket: demo\n", "bucket")
    commit_file(work, "expert_config/CDCTimeZeros.json", json.dumps({"min_hits": 50}), "cdc")
    git(work, "push", "-q", "origin", "main")
    return bare, work


def test_clone_reads_overrides_and_bucket_yaml(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    snap = pull_settings(str(bare), tmp_path / "co")
    assert snap.commit == git(work, "rev-parse", "HEAD")
    assert snap.expert_configs == {"CDCTimeZeros": {"min_hits": 50}}
    assert snap.bucket_yaml is not None and snap.bucket_yaml.read_text() == "bucket: demo\n"
    assert snap.path == (tmp_path / "co").resolve()


def test_fast_forward_and_file_url(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    url = f"file://{bare}"
    first = pull_settings(url, tmp_path / "co")
    new = commit_file(work, "expert_config/SVDTimeOffsets.json", json.dumps({"bins": 40}), "svd")
    git(work, "push", "-q", "origin", "main")
    second = pull_settings(url, tmp_path / "co")
    assert second.commit == new != first.commit
    assert second.expert_configs["SVDTimeOffsets"] == {"bins": 40}
    assert pull_settings(url, tmp_path / "co").commit == new  # nothing new: no-op


def test_dirty_checkout_is_an_error(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, _ = remote
    co = tmp_path / "co"
    pull_settings(str(bare), co)
    (co / "expert_config" / "CDCTimeZeros.json").write_text('{"min_hits": 1}')
    with pytest.raises(SettingsRepoError, match="dirty.*CDCTimeZeros.json"):
        pull_settings(str(bare), co)
    git(co, "checkout", "--", ".")
    (co / "expert_config" / "New.json").write_text("{}")  # untracked counts as dirty too
    with pytest.raises(SettingsRepoError, match="dirty"):
        pull_settings(str(bare), co)


def test_diverged_checkout_is_an_error(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    co = tmp_path / "co"
    pull_settings(str(bare), co)
    commit_file(co, "local.txt", "x", "local commit")
    with pytest.raises(SettingsRepoError, match="local commits that are not on"):
        pull_settings(str(bare), co)
    commit_file(work, "remote.txt", "y", "remote commit")
    git(work, "push", "-q", "origin", "main")
    with pytest.raises(SettingsRepoError, match="diverged"):
        pull_settings(str(bare), co)
    assert not (co / "remote.txt").exists()  # never merged silently


def test_bad_json_names_the_file(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    commit_file(work, "expert_config/Broken.json", "{not json", "broken")
    git(work, "push", "-q", "origin", "main")
    with pytest.raises(SettingsRepoError, match=r"Broken\.json: invalid JSON"):
        pull_settings(str(bare), tmp_path / "co")


def test_branch_and_wrong_origin(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, work = remote
    git(work, "checkout", "-q", "-b", "bucket42")
    c = commit_file(work, "expert_config/BeamSpot.json", "{}", "b42")
    git(work, "push", "-q", "origin", "bucket42")
    co = tmp_path / "co"
    pull_settings(str(bare), co)  # main
    snap = pull_settings(str(bare), co, branch="bucket42")
    assert snap.commit == c and "BeamSpot" in snap.expert_configs
    with pytest.raises(SettingsRepoError, match="no branch 'nope'"):
        pull_settings(str(bare), co, branch="nope")
    other = tmp_path / "other.git"
    git(tmp_path, "init", "-q", "--bare", str(other))
    with pytest.raises(SettingsRepoError, match="tracks"):
        pull_settings(str(other), co)
    with pytest.raises(SettingsRepoError, match="does not exist"):
        pull_settings(str(tmp_path / "missing.git"), tmp_path / "co2")


def test_checkout_that_is_not_a_clone(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, _ = remote
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("x")
    with pytest.raises(SettingsRepoError, match="not a git checkout|inside another git repository"):
        pull_settings(str(bare), plain)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SettingsRepoError, match="not a directory"):
        pull_settings(str(bare), tmp_path / "afile")
