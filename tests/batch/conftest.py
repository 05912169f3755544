"""Fixtures of the batch tests: bucket copies of the session's simulated bucket (tests/conftest.py), stand-ins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakebatch (bucket_helpers: tests/conftest.py)


@pytest.fixture
def bucket_copy(simulated_bucket, tmp_path):
    """``bucket_copy(name, changes, calibrations=None)``: a bucket YAML under ``tmp_path/name`` reading the
    session's simulated raw data, with a private copy of its conditions."""

    def make(name: str, changes: dict | None = None, calibrations: Path | None = None) -> Path:
        base = tmp_path / name
        base.mkdir()
        return simulated_bucket.config(base, calibrations=calibrations, changes=dict(changes or {}))

    return make


@pytest.fixture
def fake_batch(tmp_path, monkeypatch) -> Path:
    """LSF and HTCondor command stand-ins first on PATH; returns their state directory."""
    import fakebatch

    state = tmp_path / "fakebatch"
    fakebatch.install(tmp_path / "fakebin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'fakebin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKEBATCH_DIR", str(state))
    return state


def slurm_is_up() -> bool:
    """Whether a Slurm controller answers and a node accepts jobs."""
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip() in ("idle", "mix", "alloc") for s in out.stdout.split())


@pytest.fixture(scope="session")
def slurm():
    """A running Slurm (``.ci/slurm start``); in CI (CI=true) its absence fails the test instead of skipping."""
    if not slurm_is_up():
        message = "no Slurm is running here (start one with: .ci/slurm start)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must run the slurm tests")
        pytest.skip(message)
