"""Pull the bucket's settings repository (git) and read the expert overrides from it.

The settings repository (usually a GitLab project named after the bucket) holds an optional
``bucket.yaml`` at its root and one ``expert_config/<CalibrationName>.json`` per calibration whose
defaults an expert overrides.  Before a run it is cloned, or fast-forwarded if already checked out;
a dirty checkout (local edits, untracked files) or one whose history diverged from the remote is an
error, never a silent merge.  git runs as a subprocess without prompts (credentials come from git's
own credential helpers, never from b2luca).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from .errors import SettingsRepoError

GIT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class SettingsSnapshot:
    """What a run uses from the settings repository."""

    commit: str
    path: Path
    bucket_yaml: Path | None
    expert_configs: dict[str, dict[str, Any]]


def _redact_url(url: str) -> str:
    """Hide credentials in ``https://user:token@host/...``."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", url)


def _is_local(url: str) -> bool:
    return "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url)


def _normalise(url: str) -> str:
    """Local paths become absolute (clones made from another cwd still match)."""
    if url.startswith("file://"):
        return "file://" + str(Path(url[len("file://"):]).resolve())
    if _is_local(url):
        return str(Path(url).expanduser().resolve())
    return url.rstrip("/")


def _git(args: list[str], cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", LC_ALL="C", GIT_ASKPASS="echo")
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
    except FileNotFoundError:
        raise SettingsRepoError("git is not installed (needed to pull the settings repository)") from None
    except subprocess.TimeoutExpired:
        raise SettingsRepoError(f"git {' '.join(_redact_url(a) for a in args)} timed out after "
                                f"{GIT_TIMEOUT_S:.0f} s") from None
    if check and proc.returncode != 0:
        msg = _redact_url((proc.stderr or proc.stdout).strip())
        raise SettingsRepoError(f"git {' '.join(_redact_url(a) for a in args)} failed in {cwd or '.'}: {msg}")
    return proc


def _clone(url: str, checkout: Path, branch: str | None) -> None:
    checkout.parent.mkdir(parents=True, exist_ok=True)
    args = ["clone", "--quiet"]
    if branch:
        args += ["--branch", branch]
    _git([*args, url, str(checkout)])


def _update(url: str, checkout: Path, branch: str | None) -> None:
    if _git(["rev-parse", "--show-toplevel"], cwd=checkout, check=False).returncode != 0:
        raise SettingsRepoError(f"{checkout} exists but is not a git checkout of the settings repository")
    top = Path(_git(["rev-parse", "--show-toplevel"], cwd=checkout).stdout.strip()).resolve()
    if top != checkout.resolve():
        raise SettingsRepoError(f"{checkout} is inside another git repository ({top}), not a settings checkout")
    origin = _git(["remote", "get-url", "origin"], cwd=checkout, check=False).stdout.strip()
    if _normalise(origin) != _normalise(url):
        raise SettingsRepoError(
            f"settings checkout {checkout} tracks {_redact_url(origin) or 'no origin'}, not {_redact_url(url)}; "
            "remove it or point settings at the right repository"
        )
    dirty = _git(["status", "--porcelain", "--untracked-files=all"], cwd=checkout).stdout.strip()
    if dirty:
        lines = dirty.splitlines()
        raise SettingsRepoError(
            f"settings checkout {checkout} is dirty ({len(lines)} changed/untracked file(s): "
            + ", ".join(ln[3:] for ln in lines[:5]) + (" ..." if len(lines) > 5 else "")
            + "); commit and push the changes to the settings repository, or discard them"
        )
    _git(["fetch", "--quiet", "--prune", "origin"], cwd=checkout)
    current = _git(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=checkout, check=False).stdout.strip()
    if branch and branch != current:
        if _git(["rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}"], cwd=checkout,
                check=False).returncode != 0:
            raise SettingsRepoError(f"settings repository {_redact_url(url)} has no branch {branch!r}")
        _git(["checkout", "--quiet", branch], cwd=checkout)
        current = branch
    if not current:
        raise SettingsRepoError(f"settings checkout {checkout} has a detached HEAD; give a branch")
    remote_ref = f"refs/remotes/origin/{current}"
    if _git(["rev-parse", "--verify", "--quiet", remote_ref], cwd=checkout, check=False).returncode != 0:
        raise SettingsRepoError(f"branch {current!r} of {checkout} does not exist on {_redact_url(url)}")
    head = _git(["rev-parse", "HEAD"], cwd=checkout).stdout.strip()
    remote = _git(["rev-parse", remote_ref], cwd=checkout).stdout.strip()
    if head == remote:
        return
    behind = _git(["merge-base", "--is-ancestor", "HEAD", remote_ref], cwd=checkout, check=False).returncode == 0
    if behind:
        _git(["merge", "--quiet", "--ff-only", remote_ref], cwd=checkout)
        return
    ahead = _git(["merge-base", "--is-ancestor", remote_ref, "HEAD"], cwd=checkout, check=False).returncode == 0
    what = "has local commits that are not on" if ahead else "has diverged from"
    raise SettingsRepoError(
        f"settings checkout {checkout} (branch {current!r}, {head[:12]}) {what} origin/{current} "
        f"({remote[:12]}); refusing to merge: push or reset the checkout"
    )


def read_expert_configs(root: Path) -> dict[str, dict[str, Any]]:
    """``expert_config/<CalibrationName>.json`` → {name: overrides}; bad JSON is an error naming the file."""
    out: dict[str, dict[str, Any]] = {}
    d = Path(root) / "expert_config"
    if not d.is_dir():
        return out
    for path in sorted(d.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SettingsRepoError(f"{path}: invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise SettingsRepoError(f"{path}: expert_config must be a JSON object, not {type(data).__name__}")
        out[path.stem] = data
    return out


def pull_settings(url: str, checkout: Path, branch: str | None = None) -> SettingsSnapshot:
    """Clone ``url`` into ``checkout`` (or fast-forward it) and read the settings.

    ``url``: a local path, a ``file://`` URL or a git URL (https GitLab project, ssh).  Raises
    :class:`SettingsRepoError` with a clear message on any problem.
    """
    checkout = Path(checkout)
    src = _normalise(url) if (_is_local(url) or url.startswith("file://")) else url
    if _is_local(url) and not Path(src).exists():
        raise SettingsRepoError(f"settings repository {url} does not exist")
    if checkout.exists() and not checkout.is_dir():
        raise SettingsRepoError(f"settings checkout {checkout} exists and is not a directory")
    if not checkout.exists() or not any(checkout.iterdir()):
        _clone(src, checkout, branch)
    else:
        _update(src, checkout, branch)
    commit = _git(["rev-parse", "HEAD"], cwd=checkout).stdout.strip()
    bucket_yaml = checkout / "bucket.yaml"
    return SettingsSnapshot(
        commit=commit,
        path=checkout.resolve(),
        bucket_yaml=bucket_yaml if bucket_yaml.is_file() else None,
        expert_configs=read_expert_configs(checkout),
    )
