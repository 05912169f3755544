"""Synthetic run-database records, shaped like the Belle II RunDB REST API answers (``expand=true``).

Flagged runs (so that the usual input-data filters have something to exclude), by position in the
sorted run list when the list is long enough:

* ``runs[2]``: cosmic-only run: ``run_type`` "cosmic", ``beam_energy`` "No Beam", no luminosity;
  only ``cosmic_calib`` data are written for it;
* ``runs[4]``: bad quality: ``quality_expert.overall`` and ``.cdc`` "Bad" (data written normally);
* ``runs[6]``: magnet off: ``detectors.magnet`` "Off"; all data tags are written, simulated without
  field (straight tracks, ``omega = 0``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

DETECTORS = ("pxd", "svd", "cdc", "ecl", "top", "arich", "klm")
_T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def flagged_runs(runs: list[int]) -> dict[str, int | None]:
    """{"cosmic": run, "bad": run, "magnet_off": run} (None where the list is too short)."""
    r = sorted(runs)
    pick = lambda i: r[i] if len(r) > i else None  # noqa: E731
    return {"cosmic": pick(2), "bad": pick(4), "magnet_off": pick(6)}


def run_records(experiment: int, runs: list[int], seed: int) -> list[dict[str, Any]]:
    """One RunDB record per run (deterministic for the seed)."""
    flags = flagged_runs(runs)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(experiment), 0x12DB]))
    records = []
    for run in sorted(runs):
        start = _T0 + timedelta(days=int(experiment) - 26) * 14 + timedelta(hours=2 * int(run))
        stop = start + timedelta(minutes=int(rng.integers(60, 110)))
        cosmic = run == flags["cosmic"]
        quality = {d: "Good" for d in ("overall", *DETECTORS)}
        if run == flags["bad"]:
            quality["overall"] = quality["cdc"] = "Bad"
        lumi = 0.0 if cosmic else round(float(rng.uniform(1.2, 1.8)), 4)
        records.append({
            "experiment": int(experiment),
            "run": int(run),
            "run_type": "cosmic" if cosmic else "physics",
            "beam_energy": "No Beam" if cosmic else "4S",
            "time_start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "time_stop": stop.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "detectors": {**{d: True for d in DETECTORS}, "magnet": "Off" if run == flags["magnet_off"] else "On"},
            "quality_expert": quality,
            "statistics": {"lumi_recorded": lumi},
        })
    return records


def data_tags_for_run(record: dict[str, Any], tags: list[str]) -> list[str]:
    """Which data tags get raw files for this run (see module docstring)."""
    if record["run_type"] == "cosmic":
        return [t for t in tags if t == "cosmic_calib"]
    return list(tags)
