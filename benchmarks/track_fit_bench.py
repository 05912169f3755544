#!/usr/bin/env python
"""CPU time of the alignment's track fit (``fit_track_model``) on the files of an alignment job directory.

Reads the raw files of a VXDCDCAlignment job (its ``caf_config.json`` and ``input_data.json``, e.g. a copy of
``work/demo/calibrations/VXDCDCAlignment`` after ``b2luca run configs/demo.yaml``), builds the measurements
with the job's starting constants and times the broken-line fit of every sample, CPU seconds (best of
``--repeat``), and the part of it spent in :func:`b2luca.reco.fit.fit_tracks` (the samples include the cosmics:
two arms, scattering on).  ``--production``: the cDST production's fit instead (``fit_robust``: helix only, no kinks).  ``--save`` keeps the results; ``--compare`` reports how far they are from saved ones, in
units of the track parameters' errors, the kink widths and the hit errors.

    python benchmarks/track_fit_bench.py work/demo/calibrations/VXDCDCAlignment --save /tmp/before.npz
    python benchmarks/track_fit_bench.py work/demo/calibrations/VXDCDCAlignment --compare /tmp/before.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from b2luca.contract import chain_from_caf_config
from b2luca.iov import ExpRun
from b2luca.reco.measurements import build_measurements, load_constants
from b2luca.reco.raw import first_events, read_raw
from b2luca.reco import robust
from b2luca.reco.robust import fit_robust
from b2luca.reco.track_model import fit_track_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KEYS = ("params", "cov", "chi2", "residual", "kink_residual", "kink_sigma")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", type=Path, help="an alignment job directory (caf_config.json, input_data.json)")
    ap.add_argument("--files", type=int, default=2, help="files per sample (default 2)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--compare", type=Path)
    ap.add_argument("--production", action="store_true", help="time the cDST production's fit (fit_robust)")
    args = ap.parse_args()
    from calibrations.vxdcdc_alignment import SAMPLE_MASS

    caf = json.loads((args.job / "caf_config.json").read_text())
    inputs = json.loads((args.job / "input_data.json").read_text())
    expert = caf.get("expert_config", {})
    first = min(tuple(er) for files in inputs.values() for _, er in files)
    constants = load_constants(chain_from_caf_config(caf), ExpRun(*first))
    samples = []
    for name, files in inputs.items():
        cap = expert.get(f"{name}.max_processed_events_per_file")
        for path, _ in files[: args.files]:
            raw = read_raw(sorted(Path(path).glob("*.root")))
            samples.append((name, build_measurements(first_events(raw, int(cap)) if cap else raw, constants)))
    best, best_fit, models = np.inf, np.inf, []
    keys = KEYS[:4] if args.production else KEYS
    in_fit = [0.0]
    fit_tracks = robust.fit_tracks

    def timed_fit_tracks(*a, **kw):  # type: ignore[no-untyped-def]
        t = time.process_time()
        try:
            return fit_tracks(*a, **kw)
        finally:
            in_fit[0] += time.process_time() - t

    robust.fit_tracks = timed_fit_tracks  # both fits call fit_tracks through b2luca.reco.robust
    for _ in range(args.repeat):
        in_fit[0] = 0.0
        t0 = time.process_time()
        if args.production:
            models = [fit_robust(m, constants) for _, m in samples]
        else:
            models = [fit_track_model(m, constants, mass=SAMPLE_MASS[name]) for name, m in samples]
        best = min(best, time.process_time() - t0)
        best_fit = min(best_fit, in_fit[0])
    robust.fit_tracks = fit_tracks
    n = sum(m.n_tracks for _, m in samples)
    what = "production fit" if args.production else "track fit"
    print(f"{what}: {n} tracks in {len(samples)} files, {best:.3f} CPU-s, of which fit_tracks {best_fit:.3f} CPU-s "
          f"(best of {args.repeat})")
    out = {f"{i}_{k}": getattr(tm, k) for i, tm in enumerate(models) for k in keys}
    if args.save:
        np.savez(args.save, **out)
    if args.compare:
        ref = np.load(args.compare)
        worst = {"params/sigma": 0.0, "kink/sigma": 0.0, "residual/hit sigma": 0.0}
        for i, (_, m) in enumerate(samples):
            a = {k: out[f"{i}_{k}"] for k in keys}
            b = {k: ref[f"{i}_{k}"] for k in keys}
            if a["params"].shape != b["params"].shape:
                print(f"file {i}: {a['params'].shape[0]} tracks kept against {b['params'].shape[0]}")
                continue
            err = np.sqrt(np.einsum("tii->ti", b["cov"]))
            worst["params/sigma"] = max(worst["params/sigma"], float(np.max(np.abs(a["params"] - b["params"]) / err)))
            if not args.production:
                worst["kink/sigma"] = max(worst["kink/sigma"], float(np.max(
                    np.abs(a["kink_residual"] - b["kink_residual"]) / b["kink_sigma"], initial=0.0)))
            fin = np.isfinite(b["residual"])
            # bound: the largest residual change over the smallest hit error
            worst["residual/hit sigma"] = max(worst["residual/hit sigma"], float(np.max(
                np.abs(a["residual"] - b["residual"])[fin], initial=0.0)) / float(np.min(m.sigma)))
        print("largest differences: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
