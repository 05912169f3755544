"""Shared fixtures of the batch tests: one simulated bucket per session, private bucket copies, stand-ins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bucket_helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakebatch

from bucket_helpers import make_bucket  # noqa: E402

SMALL_EVENTS = {"cosmic_calib": 150, "mumu_tight_or_highm_calib": 600, "hadron_calib": 300,
                "bhabha_all_calib": 300, "random_calib": 50}
SECRET = "glpat-b2luca-test-SECRET-4711"


@pytest.fixture(scope="session")
def simulated(tmp_path_factory) -> Path:
    """The demo bucket's data (small), simulated once; its conditions directory is copied per bucket."""
    from b2luca.config import load_config
    from b2luca.dataset import simulate_config

    base = tmp_path_factory.mktemp("batch-sim")
    cfg = load_config(make_bucket(base, events=SMALL_EVENTS))
    simulate_config(cfg)
    return base


@pytest.fixture
def bucket_copy(simulated, tmp_path):
    """``bucket_copy(name, changes, calibrations=None)``: a bucket YAML reusing the simulated raw data."""

    def make(name: str, changes: dict | None = None, calibrations: Path | None = None) -> Path:
        base = tmp_path / name
        base.mkdir()
        shutil.copytree(simulated / "conditions", base / "conditions")
        all_changes = {"data.raw_directory": str(simulated / "data"), **(changes or {})}
        return make_bucket(base, events=SMALL_EVENTS, calibrations=calibrations, changes=all_changes)

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
