"""Fixtures of the runner tests: the stand-in basf2 tools on PATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

STANDINS = Path(__file__).resolve().parent / "standins"


def standin_path() -> str:
    """PATH with the stand-in basf2 tools and this Python's bin directory in front."""
    return os.pathsep.join([str(STANDINS), str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@pytest.fixture
def basf2_standins(monkeypatch):
    """Put b2caf-prompt-run / b2val-prompt-run / b2conditionsdb stand-ins on PATH (b2luca importable by them)."""
    monkeypatch.setenv("PATH", standin_path())
    repo = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    return STANDINS
