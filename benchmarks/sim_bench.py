"""Benchmark of the toy detector simulation: events/s, hits/s, the demo bucket's wall time, and the
VXD hit counts per sensor available to the alignment (good runs, alignment data tags).

    python benchmarks/sim_bench.py [--events JSON] [--runs 1-8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from b2luca.reco.geometry import nominal_geometry
from b2luca.sim import make_truth, simulate_bucket, simulate_sample
from b2luca.sim.runs import flagged_runs

#: events per run per data tag of configs/demo.yaml (the demo bucket this benchmark times)
DEMO_EVENTS = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())[
    "simulation"]["events"]
ALIGNMENT_TAGS = ("cosmic_calib", "mumu_tight_or_highm_calib", "hadron_calib")


def per_tag_rates(n: int = 2000) -> None:
    geom = nominal_geometry()
    truth = make_truth(1, geom)
    print(f"{'data tag':28s} {'events/s':>10s} {'hits/s':>12s}")
    for tag in DEMO_EVENTS:
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        res = simulate_sample(tag, n, rng, truth, geom)
        dt = time.perf_counter() - t
        hits = sum(v["event"].size for k, v in res.raw.items() if k != "event")
        print(f"{tag:28s} {n / dt:10.0f} {hits / dt:12.0f}")


def fit_rate(n_events: int = 1000) -> None:
    """Tracks/s of the reconstruction (measurements + fit with scattering kinks) on mumu and hadron events."""
    from b2luca.reco.fit import fit_tracks
    from b2luca.reco.measurements import Constants, build_measurements
    from b2luca.sim.truth import truth_payloads

    geom = nominal_geometry()
    truth = make_truth(1, geom)
    constants = Constants.from_payloads(truth_payloads(truth, geom), geom)
    for tag in ALIGNMENT_TAGS:
        res = simulate_sample(tag, n_events, np.random.default_rng(0), truth, geom)
        raw = {k: {**v, "gevent": v["event"] - 1} for k, v in res.raw.items()}
        t = time.perf_counter()
        meas = build_measurements(raw, constants, geom)
        fr = fit_tracks(meas, constants, geom)
        dt = time.perf_counter() - t
        print(f"  reco fit {tag:28s} {meas.n_tracks / dt:8.0f} tracks/s  (chi2/ndf {fr.chi2.sum() / fr.ndf.sum():.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default=json.dumps(DEMO_EVENTS))
    ap.add_argument("--runs", default="1-8")
    ap.add_argument("--keep", default=None, help="write into this directory and keep it")
    args = ap.parse_args()
    events = json.loads(args.events)
    lo, hi = (int(x) for x in args.runs.split("-"))
    runs = list(range(lo, hi + 1))
    per_tag_rates()
    fit_rate()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="simbench"))
    try:
        t = time.perf_counter()
        s = simulate_bucket(bucket="demo", experiment=26, runs=runs, seed=20261124, events=events,
                            data_dir=out / "data", conditions_dir=out / "conditions")
        wall = time.perf_counter() - t
        n_ev = sum(s.events.values())
        n_hits = sum(s.hits.values())
        size = sum(p.stat().st_size for p in s.files) / 1e6
        print(f"\ndemo bucket: runs {lo}-{hi}, events/run {events}")
        print(f"  wall time {wall:.1f} s  ({n_ev} events, {n_ev / wall:.0f} events/s, {n_hits / wall:.0f} hits/s, "
              f"{len(s.files)} files, {size:.0f} MB)")
        print(f"  hits: {s.hits}")
        flags = flagged_runs(runs)
        good = [r for r in runs if r not in flags.values()]
        geom = nominal_geometry()
        counts = sum(v for (run, tag), v in s.vxd_hits_by_run_tag.items() if run in good and tag in ALIGNMENT_TAGS)
        print(f"  VXD hits per sensor for the alignment (good runs {good}, tags {', '.join(ALIGNMENT_TAGS)}):")
        for layer in range(1, 7):
            c = counts[geom.layer == layer]
            print(f"    layer {layer}: {c.size:3d} sensors, min {c.min():6d}, mean {c.mean():8.0f}")
        print(f"    all: min {counts.min()}, mean {counts.mean():.0f}")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
