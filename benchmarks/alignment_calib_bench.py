#!/usr/bin/env python
"""Benchmark of the VXDCDCAlignment calibration: where its time goes.

Simulates a bucket (the alignment's samples only: di-muons and cosmics), runs the calibration as the native
runner does and then its validation, and reports wall and CPU time per phase:

* track fitting (``build_measurements`` + ``fit_track_model``, the broken-line fit),
* record writing (``records_from_dense``: Mille records in memory) and the per-interval label translation,
* solve (the global fit: local elimination, assembly, sparse solve, errors),
* the per-run monitor (automatic boundaries), and
* validation (``run_validation``: truth comparison, track chi2 before/after, per-run trend).

    python benchmarks/alignment_calib_bench.py                        # runs 4-5, 1500 mu-pairs + 300 cosmics/run
    python benchmarks/alignment_calib_bench.py --runs 1-4 --mumu 3000 --iterations 3
    python benchmarks/alignment_calib_bench.py --move PXD:5:30,0,0 --overrides '{"auto_boundaries": "apply"}'

The same events in few large or many small runs (the cost must follow the tracks, not the runs; per-file caps off):

    OFF='{"mumu_tight_or_highm_calib.max_processed_events_per_file": -1, "cosmic_calib.max_processed_events_per_file": -1}'
    python benchmarks/alignment_calib_bench.py --runs 1-2 --mumu 600 --cosmics 160 --overrides "$OFF"
    python benchmarks/alignment_calib_bench.py --runs 1-40 --mumu 30 --cosmics 8 --overrides "$OFF"

Phases are timed by wrapping the library functions the calibration calls (nothing in the calibration
changes); "other" is the rest of ``calibrate`` (reading raw files, bookkeeping, storing payloads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIMES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # phase -> [wall, cpu]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_DEPTH = [0]  # timed calls in progress: a timed function called inside another is counted by the outer one


def timed(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its wall and CPU time added to ``TIMES[phase]`` (when not inside another timed call)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _DEPTH[0] += 1
        t, c = time.perf_counter(), _cpu()
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                TIMES[phase][0] += time.perf_counter() - t
                TIMES[phase][1] += _cpu() - c

    return wrapper


def instrument() -> None:
    """Wrap the functions the calibration looks up at call time."""
    import b2luca.alignment as A
    import b2luca.reco.measurements as M
    import b2luca.reco.track_model as T
    import calibrations.vxdcdc_alignment as cal

    M.build_measurements = timed("track fitting", M.build_measurements)
    T.fit_track_model = timed("track fitting", T.fit_track_model)
    A.records_from_dense = timed("record writing", A.records_from_dense)
    cal.part_trend = timed("monitor (per-run trend)", cal.part_trend)  # its own records and solve: counted here
    A.solve = timed("solve", A.solve)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="4-5", help="first-last run (default 4-5)")
    ap.add_argument("--mumu", type=int, default=1500, help="di-muon events per run")
    ap.add_argument("--cosmics", type=int, default=300, help="cosmic events per run")
    ap.add_argument("--iterations", type=int, default=2, help="max_iterations")
    ap.add_argument("--move", default="", help="PART:FROM_RUN:x,y,z (um), e.g. PXD:5:30,0,0")
    ap.add_argument("--overrides", default="{}", help="JSON expert_config overrides")
    ap.add_argument("--seed", type=int, default=1414)
    args = ap.parse_args()

    from b2luca.conditions import DatabaseChain, LocalDatabase
    from b2luca.contract import CalibrationJob
    from b2luca.iov import ExpRun, IoV
    from b2luca.sim import simulate_bucket

    import calibrations.vxdcdc_alignment as cal
    import calibrations.validations.vxdcdc_alignment as val

    lo, hi = (int(x) for x in args.runs.split("-"))
    runs = list(range(lo, hi + 1))
    moves = []
    if args.move:
        part, run, shift = args.move.split(":")
        moves = [{"part": part, "from_run": int(run), "shift_um": [float(x) for x in shift.split(",")]}]
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="align_calib_bench_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        s = simulate_bucket(bucket="bench", experiment=26, runs=runs, seed=args.seed,
                            events={"mumu_tight_or_highm_calib": args.mumu, "cosmic_calib": args.cosmics},
                            data_dir=root / "raw", conditions_dir=root / "cond", movements=moves)
        sim_s = time.perf_counter() - t
        truth = LocalDatabase(root / "cond" / s.global_tags["truth"])
        t0db = LocalDatabase(root / "t0").create()
        t0db.store("CDCTimeZeros", truth.read("CDCTimeZeros", ExpRun(26, lo)), IoV(0, 0, -1, -1))
        chain = DatabaseChain([t0db, LocalDatabase(root / "cond" / s.global_tags["nominal"])])
        inputs = {n: [(p, ExpRun(26, r)) for r in runs
                      for p in sorted((root / "raw" / "e0026" / f"r{r:05d}" / n).glob("*.root"))]
                  for n in cal.settings.input_data_names}
        work = root / "job"
        out = LocalDatabase(work / "caf_outputdb_results" / cal.settings.name).create()
        config = {**cal.settings.expert_config, "max_iterations": args.iterations, **json.loads(args.overrides)}
        (work / "caf_config.json").write_text(json.dumps({
            "caf_script": cal.__file__, "backend_args": {}, "requested_iov": [26, lo, -1, -1], "expert_config": config,
            "database_chain": [str(t0db.database_txt), str(chain.databases[1].database_txt)]}))
        (work / "input_data.json").write_text(json.dumps({k: [[str(p), e.as_list()] for p, e in v]
                                                          for k, v in inputs.items()}))
        job = CalibrationJob(name=cal.settings.name, input_files=inputs, requested_iov=IoV(26, lo, -1, -1),
                             expert_config=config, output_db=out, database_chain=chain, work_dir=work,
                             log=logging.getLogger("bench"))
        instrument()
        t, c = time.perf_counter(), _cpu()
        cal.calibrate(job)
        cal_wall, cal_cpu = time.perf_counter() - t, _cpu() - c
        t, c = time.perf_counter(), _cpu()
        here = os.getcwd()
        os.chdir(work)
        try:
            verdict = timed("validation", val.run_validation)(str(work), str(work / "input_data.json"), [26, lo, -1, -1], config,
                                         reference_db=DatabaseChain([truth]))
        finally:
            os.chdir(here)
        summary = json.loads((work / cal.SUMMARY_FILE).read_text())
    inside = sum(v[0] for k, v in TIMES.items() if k != "validation")
    inside_cpu = sum(v[1] for k, v in TIMES.items() if k != "validation")
    TIMES["other (read, bookkeeping, store)"] = [cal_wall - inside, cal_cpu - inside_cpu]
    tracks = summary["iterations"][-1]["tracks"]
    print(f"simulation {sim_s:.1f} s; runs {lo}-{hi}; {tracks} tracks; {len(summary['iterations'])} iteration(s); "
          f"proposed boundaries: {summary['proposed_boundaries'] or 'none'}; validation passed: {verdict.passed}"
          + ("" if verdict.passed else f" ({verdict.message})"))
    print(f"{'phase':36s} {'wall s':>8s} {'cpu s':>8s} {'share':>6s}")
    total = cal_wall + TIMES["validation"][0]
    for k, (w, c) in TIMES.items():
        print(f"{k:36s} {w:8.2f} {c:8.2f} {100 * w / total:5.1f}%")
    print(f"{'calibrate + validation':36s} {total:8.2f} {cal_cpu + TIMES['validation'][1]:8.2f}")


if __name__ == "__main__":
    main()
