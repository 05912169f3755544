"""Fixtures: the conditions-DB test server and payload files of a small local database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from b2luca.conditions import GlobalTag
from b2luca.conditions.backend import CentralBackend
from b2luca.conditions.rest import CondDBClient
from b2luca.iov import IoV

from .fake_conddb import FakeCondDB

TAG = "prompt_test"


@pytest.fixture
def conddb():
    server = FakeCondDB().start()
    yield server
    server.stop()


def central(server: FakeCondDB, retries: int = 1) -> CentralBackend:
    """A backend talking to ``server`` with small retry numbers and no back-off (fast tests)."""
    return CentralBackend(CondDBClient(server.url, server.token, timeout=5.0, retries=retries, backoff=0.0), TAG)


@pytest.fixture
def staged(tmp_path: Path):
    """Three payload entries in a local (staging) prompt tag: two names, one with two IoVs."""
    tag = GlobalTag.create(tmp_path / "conditions", TAG)
    rng = np.random.default_rng(7)
    entries = [tag.store("CDCTimeZeros", {"t0": rng.normal(size=20), "t0_error": np.full(20, 0.1)}, IoV(1, 1, -1, -1)),
               tag.store("SVDTimeOffsets", {"offset": rng.normal(size=8)}, IoV(1, 1, -1, -1)),
               tag.store("SVDTimeOffsets", {"offset": rng.normal(size=8)}, IoV(1, 5, -1, -1))]
    return entries
