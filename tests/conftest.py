"""Fixtures shared by every test folder.

``bucket_config``     a factory: ``bucket_config(**changes)`` writes a bucket YAML like ``configs/demo.yaml``
                      whose every path lies under the test's ``tmp_path`` and returns its path (keyword
                      arguments as :func:`bucket_helpers.make_bucket`: ``events``, ``calibrations``,
                      ``select``, ``changes={"dotted.key": value}``).
``simulated_bucket``  one small simulated bucket per test session (toy detector, 8 runs): its raw data,
                      run list and conditions are made once and shared.  Treat it as **read only**; to run
                      tasks on it, use ``simulated_bucket.config(tmp_path)``, a bucket YAML that reads the
                      shared data and writes everything else under ``tmp_path``.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # bucket_helpers, report.fake_gitlab from any test folder

from bucket_helpers import make_bucket  # noqa: E402

#: Event counts of the shared simulated bucket: enough for every calibration of the demo to run.
SESSION_EVENTS = {"cosmic_calib": 150, "mumu_tight_or_highm_calib": 600, "hadron_calib": 300,
                  "bhabha_all_calib": 300, "random_calib": 50}


@pytest.fixture
def bucket_config(tmp_path: Path) -> Callable[..., Path]:
    """A factory of bucket YAML files under ``tmp_path`` (see the module docstring)."""

    def make(**kwargs: Any) -> Path:
        return make_bucket(tmp_path, **kwargs)

    return make


@dataclass(frozen=True)
class SimulatedBucket:
    """The session's simulated bucket: ``data`` (raw files, ``runs.json``) and ``conditions`` (global tags)."""

    data: Path
    conditions: Path
    events: dict[str, int]

    def config(self, base: Path, **kwargs: Any) -> Path:
        """A bucket YAML under ``base`` reading this bucket's data, with a private copy of its conditions.

        The conditions are copied because runs write the prompt global tag; the raw data is shared.
        """
        conditions = base / "conditions"
        if not conditions.exists():
            shutil.copytree(self.conditions, conditions)
        changes = {"data.raw_directory": str(self.data), **kwargs.pop("changes", {})}
        return make_bucket(base, events=dict(self.events), changes=changes, **kwargs)


@pytest.fixture(scope="session")
def simulated_bucket(tmp_path_factory: pytest.TempPathFactory) -> SimulatedBucket:
    """One small simulated bucket shared by the whole session (see the module docstring)."""
    from b2luca.config import load_config
    from b2luca.dataset import simulate_config

    base = tmp_path_factory.mktemp("simulated_bucket")
    cfg = load_config(make_bucket(base, events=dict(SESSION_EVENTS)))
    simulate_config(cfg)
    return SimulatedBucket(data=cfg.data.raw_directory, conditions=cfg.conditions.directory,
                           events=dict(SESSION_EVENTS))
