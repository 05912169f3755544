"""Fixtures for the task tests: one small simulated bucket per session, private work dirs per test."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from bucket_helpers import make_bucket  # noqa: E402

SMALL_EVENTS = {"cosmic_calib": 150, "mumu_tight_or_highm_calib": 600, "hadron_calib": 300,
                "bhabha_all_calib": 300, "random_calib": 50}


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated small demo bucket (raw data and the simulation's global tags), made once."""
    from b2luca.config import load_config
    from b2luca.dataset import ensure_data

    base = tmp_path_factory.mktemp("simulated")
    ensure_data(load_config(make_bucket(base, events=SMALL_EVENTS)))
    return base


@pytest.fixture()
def bucket_config(simulated: Path, tmp_path: Path):
    """``make(calibrations=None, select=None, changes=None) -> config path``: a bucket on the shared
    simulated data with its own work dir, RunDB snapshot, archive and copy of the conditions directory."""

    def make(calibrations: Path | None = None, select: list[str] | None = None,
             changes: dict | None = None) -> Path:
        shutil.copytree(simulated / "conditions", tmp_path / "conditions")
        config = make_bucket(tmp_path, events=SMALL_EVENTS, calibrations=calibrations, select=select,
                             changes=changes)
        doc = yaml.safe_load(config.read_text())
        doc["data"]["raw_directory"] = str(simulated / "data")
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        return config

    return make
