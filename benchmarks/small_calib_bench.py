#!/usr/bin/env python
"""CPU time of the fits of the small calibrations on the demo's critical path (issue 15): CDCTimeZeros' T0 fit,
compiled (:mod:`calibrations._cdc_t0_kernels`) against its numpy/scipy reference (``fit_t0(compiled=False)``),
with the largest difference of the t0s in units of their errors; ECLCrystalEnergy's constants solve.

Reads the inputs of the job directories under a run's ``calibrations`` folder (``input_data.json`` and
``caf_config.json`` of ``CDCTimeZeros`` and ``ECLCrystalEnergy``, e.g. ``work/demo/calibrations`` after
``b2luca run configs/demo.yaml``); CPU seconds, best of ``--repeat``, after one warm-up call (numba's cache).

    python benchmarks/small_calib_bench.py work/demo/calibrations --repeat 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `import calibrations.<script>` as in the native runner
    sys.path.insert(0, str(REPO))


def _best(fn, repeat: int) -> tuple[float, object]:
    """(best CPU seconds over ``repeat`` calls, the last result)."""
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def cdc(job: Path, repeat: int) -> None:
    """CDCTimeZeros: compiled and numpy fits of the job's hits."""
    from b2luca.contract import read_input_data
    from b2luca.reco.geometry import nominal_geometry
    from calibrations import cdc_time_zeros as cal
    from calibrations._common import limit_files_per_run, read_branches

    cfg = {**cal.settings.expert_config, **json.loads((job / "caf_config.json").read_text())["expert_config"]}
    entries = read_input_data(job / "input_data.json")
    files = []
    for name in sorted(cal.settings.input_data_names):
        files += limit_files_per_run(entries.get(name, []), cfg.get("max_files_per_run"))
    t = time.process_time()
    hits = read_branches(files, "cdc", ["board", "layer", "tdc"])
    read = time.process_time() - t
    prev = np.zeros(nominal_geometry().n_cdc_boards)
    args = (hits["board"], hits["layer"], hits["tdc"], prev, int(cfg["min_hits_per_board"]), int(cfg["max_iterations"]),
            float(cfg["initial_sigma_mm"]))
    cal.fit_t0(*args)  # warm-up: numba's cache (a compilation after an edit)
    t_new, new = _best(lambda: cal.fit_t0(*args), repeat)
    t_ref, ref = _best(lambda: cal.fit_t0(*args, compiled=False), repeat)
    ok = np.isfinite(ref["t0_error"])
    pull = float(np.max(np.abs(new["t0"] - ref["t0"])[ok] / ref["t0_error"][ok]))
    print(f"CDCTimeZeros: {hits['board'].size} hits from {len(files)} files (read {read:.2f} CPU-s); fit_t0 compiled "
          f"{t_new:.2f} CPU-s, numpy/scipy {t_ref:.2f} CPU-s ({t_ref / t_new:.1f}x); max |dt0|/error {pull:.1e}, "
          f"sigma {new['sigma_mm'][0] * 1e3:.3f} vs {ref['sigma_mm'][0] * 1e3:.3f} um")


def ecl(job: Path, repeat: int) -> None:
    """ECLCrystalEnergy: the constants solve (LU, 256 error probes) of the job's Bhabha clusters."""
    from b2luca.contract import read_input_data
    from calibrations import ecl_crystal_energy as cal

    cfg = {**cal.settings.expert_config, **json.loads((job / "caf_config.json").read_text())["expert_config"]}
    files = [p for p, _ in read_input_data(job / "input_data.json").get("bhabha_all_calib", [])]
    t = time.process_time()
    ecl_hits, tracks = cal.read_bhabha(files)
    system = cal.build_system(ecl_hits, tracks, cfg)
    read = time.process_time() - t
    t_solve, _ = _best(lambda: cal.solve_constants(*system, np.ones(6624), cfg), repeat)
    print(f"ECLCrystalEnergy: {system[3].size} clusters from {len(files)} files (read + build {read:.2f} CPU-s); "
          f"solve_constants {t_solve:.2f} CPU-s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibrations", type=Path, help="a run's work/<bucket>/calibrations folder")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for name, fn in (("CDCTimeZeros", cdc), ("ECLCrystalEnergy", ecl)):
        job = args.calibrations / name
        if not (job / "input_data.json").exists():
            print(f"{name}: no {job / 'input_data.json'}, skipped")
            continue
        fn(job, max(1, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
