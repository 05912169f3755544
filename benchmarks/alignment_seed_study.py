#!/usr/bin/env python
"""VXDCDCAlignment across simulation seeds: does the validation's verdict depend on the sample (statistics) or
on the model (a bias every sample shows)?

For each seed, simulates an 8-run bucket (the test buckets' events per run by default), runs the calibration on
the runs the pipeline gives it (physics runs with the magnet on: its input-data filters), then the validation
against the truth, and prints the pull widths, the largest weak mode in units of its error, the VXD du residual
misalignment of the fitted sensors (and how many were left unfitted) and the calibration time.

    python benchmarks/alignment_seed_study.py --seeds 20261124,1,2,3
    python benchmarks/alignment_seed_study.py --seeds 1,2 --overrides '{"min_entries": 1}'
    python benchmarks/alignment_seed_study.py --seeds 20261124 --mumu 1500 --cosmics 400 --hadrons 600
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one_seed(seed: int, events: dict[str, int], overrides: dict, root: Path) -> dict:
    """Simulate, calibrate and validate one bucket under ``root``; returns the figures printed."""
    from b2luca.conditions import DatabaseChain, LocalDatabase
    from b2luca.contract import CalibrationJob
    from b2luca.iov import ExpRun, IoV
    from b2luca.sim import simulate_bucket

    import calibrations.validations.vxdcdc_alignment as val
    import calibrations.vxdcdc_alignment as cal

    runs = list(range(1, 9))
    s = simulate_bucket(bucket="seeds", experiment=26, runs=runs, seed=seed, events=events,
                        data_dir=root / "raw", conditions_dir=root / "cond")
    truth = LocalDatabase(root / "cond" / s.global_tags["truth"])
    deps = LocalDatabase(root / "deps").create()  # the upstream calibrations, perfect: their truth
    for name in ("CDCTimeZeros", "SVDTimeOffsets", "PXDMasks"):
        deps.store(name, truth.read(name, ExpRun(26, runs[0])), IoV(0, 0, -1, -1))
    nominal = LocalDatabase(root / "cond" / s.global_tags["nominal"])
    records = json.loads((root / "raw" / "runs.json").read_text())
    used = [r["run"] for r in records if r.get("run_type") == "physics" and r["detectors"]["magnet"] == "On"]
    inputs = {n: [(p, ExpRun(26, r)) for r in used for p in sorted((root / "raw" / "e0026" / f"r{r:05d}" / n).glob("*.root"))]
              for n in cal.settings.input_data_names}
    work = root / "job"
    out = LocalDatabase(work / "caf_outputdb_results" / cal.settings.name).create()
    config = {**cal.settings.expert_config, **overrides}
    (work / "caf_config.json").write_text(json.dumps({
        "caf_script": cal.__file__, "backend_args": {}, "requested_iov": [26, used[0], -1, -1], "expert_config": config,
        "database_chain": [str(deps.database_txt), str(nominal.database_txt)]}))
    (work / "input_data.json").write_text(json.dumps({k: [[str(p), e.as_list()] for p, e in v] for k, v in inputs.items()}))
    job = CalibrationJob(name=cal.settings.name, input_files=inputs, requested_iov=IoV(26, used[0], -1, -1),
                         expert_config=config, output_db=out, database_chain=DatabaseChain([deps, nominal]),
                         work_dir=work, log=logging.getLogger("seeds"))
    t = time.perf_counter()
    cal.calibrate(job)
    cal_s = time.perf_counter() - t
    here = os.getcwd()
    os.chdir(work)
    try:
        verdict = val.run_validation(str(work), str(work / "input_data.json"), [26, used[0], -1, -1], config,
                                     reference_db=DatabaseChain([truth]))
    finally:
        os.chdir(here)
    f = verdict.figures
    weak = {k[5:]: f[k] / f[k + "_error"] for k in f
            if k.startswith("weak_") and not k.endswith(("_error", "_before", "_note")) and f.get(k + "_error")}
    worst = max(weak.items(), key=lambda kv: abs(kv[1]))
    summary = json.loads((work / cal.SUMMARY_FILE).read_text())
    return {"seed": seed, "passed": verdict.passed, "message": verdict.message,
            "widths": {g: round(float(f[f"{g}_pull_width"]), 3) for g in val.PULL_GROUPS if f"{g}_pull_width" in f},
            "worst_weak_mode": (worst[0], round(float(worst[1]), 2)), "du_rms_um": round(float(f["vxd_du_rms_after_um"]), 2),
            "du_not_fitted": f.get("vxd_du_not_fitted"), "tracks": summary["iterations"][-1]["tracks"],
            "calibrate_s": round(cal_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="20261124,1,2,3")
    ap.add_argument("--mumu", type=int, default=600, help="di-muon events per run (test buckets: 600)")
    ap.add_argument("--cosmics", type=int, default=150, help="cosmic events per run (test buckets: 150)")
    ap.add_argument("--hadrons", type=int, default=300, help="hadronic events per run (test buckets: 300)")
    ap.add_argument("--overrides", default="{}", help="JSON expert_config overrides of the calibration")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    events = {"mumu_tight_or_highm_calib": args.mumu, "cosmic_calib": args.cosmics, "hadron_calib": args.hadrons}
    for seed in (int(x) for x in args.seeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="align_seeds_") as tmp:
            print(json.dumps(one_seed(seed, events, json.loads(args.overrides), Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
