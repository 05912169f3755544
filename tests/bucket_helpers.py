"""Test helpers: a private copy of the demo bucket (config, calibrations) under a temporary directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from b2luca.report import outbox

REPO = Path(__file__).resolve().parents[1]
#: calibrations that need a data tag a test's small ``events`` may not simulate; left out of the selection then
NEEDS_DATA_TAG = {"ECLMuPiCNN": "radmumu_calib"}
#: left out of test-sized buckets (``events`` given) unless selected: the demo-scale GAN trains for a minute
HEAVY = ("PXDBackgroundGAN",)


def make_bucket(base: Path, *, events: dict[str, int] | None = None, calibrations: Path | None = None,
                select: list[str] | None = None, changes: dict[str, Any] | None = None) -> Path:
    """Write a bucket YAML like configs/demo.yaml whose every path lies under ``base``."""
    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["work_dir"] = str(base / "work")
    doc["rundb"]["snapshot"] = str(base / "rundb" / "demo.csv")
    doc["data"]["raw_directory"] = str(base / "data")
    doc["conditions"]["directory"] = str(base / "conditions")
    doc["archive"]["directory"] = str(base / "archive")
    doc["calibrations"]["directory"] = str(calibrations or REPO / "calibrations")
    if events is not None:
        doc["simulation"]["events"] = events
        unfed = [name for name, tag in NEEDS_DATA_TAG.items() if not events.get(tag)] + list(HEAVY)
        if unfed and select is None:
            from b2luca.catalogue import discover

            select = [n for n in discover(calibrations or REPO / "calibrations").names if n not in unfed]
        for name in unfed:
            doc["calibrations"].get("expert_config", {}).pop(name, None)
    if select is not None:
        doc["calibrations"]["select"] = select
        for name in list(doc["calibrations"].get("expert_config", {})):  # blocks of unselected calibrations are errors
            if name not in select:
                doc["calibrations"]["expert_config"].pop(name)
    for key, value in (changes or {}).items():
        node = doc
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = base / "bucket.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def copy_calibrations(base: Path) -> Path:
    """A private copy of the repository's calibrations/ to modify in a test."""
    target = base / "calibrations"
    shutil.copytree(REPO / "calibrations", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


#: events per run of the small reporting buckets (the GitLab and central conditions-DB end-to-end tests)
REPORTING_EVENTS = {"cosmic_calib": 150, "mumu_tight_or_highm_calib": 600, "hadron_calib": 300,
                    "bhabha_all_calib": 300, "random_calib": 50}
#: a selection for tests of orchestration only (reporting, outages): every stage and group kind (local, raw, cDST
#: production, cdst, archives) without the alignment's and the ML trainings' minute (issue 15: CI time)
ORCHESTRATION = ("CDCTimeZeros", "PXDHotDeadPixels", "SVDTimeOffsets", "ECLCrystalEnergy")
#: the demo's responsible experts, as GitLab users of the fake server
EXPERTS = ("cdc_expert", "svd_expert", "pxd_expert", "alignment_expert", "beamspot_expert", "ecl_expert")


def fast_report_backoff(monkeypatch: Any) -> None:
    """Shorten the outbox's delivery back-off so outage tests retry within a second."""
    monkeypatch.setattr(outbox, "BACKOFF_BASE_S", 0.2)
    monkeypatch.setattr(outbox, "BACKOFF_MAX_S", 1.0)
