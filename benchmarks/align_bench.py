#!/usr/bin/env python
"""Benchmark of the alignment solver on barrel-like toy problems (b2luca.alignment.toy).

For each size it writes real Mille files (float32 C binary, several files of 100k tracks) plus the
constraints removing the 5 exact weak modes of the toy, then, for each method, runs the full fit in a fresh
subprocess (read + assemble + solve + errors) and reports the wall time per phase and the peak resident
memory of that process. The data pass runs one worker thread per core, so "read" (framing, in the main
thread) overlaps "assemble" (decoding, local fits, accumulation); their sum is the pass's wall time.
After the fit, the same process measures reading alone (framing + decoding, files in the page cache).

    python benchmarks/align_bench.py                       # sizes 3k,20k,60k, methods sparse,dense,minres
    python benchmarks/align_bench.py --sizes 3k,20k --methods sparse
    python benchmarks/align_bench.py --keep /tmp/bench     # keep the generated files

Sizes: 3k = 3,000 parameters / 200k tracks, 20k = 20,000 / 800k, 60k = 60,000 / 2M.
The dense method is skipped above 16,000 parameters (see b2luca.alignment.solve.DENSE_MAX).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"3k": (3000, 200_000), "20k": (20000, 800_000), "60k": (60000, 2_000_000)}
CHUNK_TRACKS = 100_000


def generate(folder: Path, n_params: int, n_tracks: int, seed: int = 1) -> Path:
    from b2luca.alignment import write_mille
    from b2luca.alignment.toy import barrel_geometry, generate_tracks

    geo = barrel_geometry(n_params, n_layers=6)
    rng = np.random.default_rng(seed)
    scale = np.tile([0.1, 0.1, 0.1, 5e-4, 5e-4, 5e-4], geo.n_sensors)
    truth = scale * rng.normal(size=scale.size)
    files = []
    done = 0
    k = 0
    while done < n_tracks:
        nt = min(CHUNK_TRACKS, n_tracks - done)
        recs = generate_tracks(geo, nt, truth, rng)
        f = folder / f"data_{k:03d}.bin"
        write_mille(f, recs)
        files.append(f.name)
        done += nt
        k += 1
    # the 5 exact weak modes of the toy: du ∝ 1, R, R²; dv ∝ 1, R
    R = geo.radius
    lines = []
    for p, fac in ((1, np.ones_like(R)), (1, R / R.mean()), (1, (R / R.mean()) ** 2), (2, np.ones_like(R)),
                   (2, R / R.mean())):
        lines.append("Constraint 0.0")
        lab = 10 * (np.arange(geo.n_sensors) + 1) + p
        lines += [f"{label} {f:.12e}" for label, f in zip(lab, fac / np.linalg.norm(fac))]
    (folder / "constraints.txt").write_text("\n".join(lines) + "\n")
    np.save(folder / "truth.npy", truth)
    steer = folder / "steer.txt"
    steer.write_text("Cfiles\n" + "\n".join(files) + "\nconstraints.txt\nmethod inversion 1 0.1\nentries 10\nend\n")
    return steer


def run_one(steer: str, method: str) -> dict:
    """Fit in this process; returns timings, peak memory and a few checks."""
    from b2luca.alignment import solve_steering

    t0 = time.perf_counter()
    res = solve_steering(steer, method=method)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    folder = Path(steer).parent
    truth = np.load(folder / "truth.npy")
    out = {"method": method, "exact": res.exact, "n_params": int(res.labels.size), "records": res.n_records,
           "wall_s": wall, "timings": res.timings, "peak_rss_gb": peak_kb / 1024**2, "chi2_ndf": res.chi2_ndf,
           "fixed": int(res.fixed.sum()), "bytes": sum(p.stat().st_size for p in folder.glob("data_*.bin"))}
    out["threads"] = res.info.get("threads")
    out.update(read_speed(sorted(folder.glob("data_*.bin"))))
    if res.errors is not None:
        # pulls against the truth projected onto the constraint surface (weak modes removed)
        from b2luca.alignment import AlignmentProblem
        from b2luca.alignment.problem import _build_constraints

        problem = AlignmentProblem.from_steering(steer)
        n = res.labels.size
        cons, _, _, _ = _build_constraints(problem, res.labels, np.ones(n, bool), np.zeros(n))
        A = cons.A
        Q, _ = np.linalg.qr(A.T)
        tp = truth - Q @ (Q.T @ truth)  # constraint rows span the weak modes here
        ok = ~res.fixed
        pull = (res.corrections[ok] - tp[ok]) / res.errors[ok]
        out["pull_rms"] = float(np.sqrt(np.mean(pull**2)))
    return out


def read_speed(files: list[Path]) -> dict:
    """Reading alone (framing + decoding every record into flat arrays), files in the page cache:
    MB/s with one thread and with one thread per core."""
    from concurrent.futures import ThreadPoolExecutor

    from b2luca.alignment.mille import iter_raw_chunks
    from b2luca.alignment.problem import CHUNK_BYTES

    nbytes = sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    for f in files:
        for raw in iter_raw_chunks(f, chunk_bytes=CHUNK_BYTES):
            raw.decode()
    one = nbytes / (time.perf_counter() - t0) / 1e6
    nt = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(nt) as pool:
        for f in files:
            for _ in pool.map(lambda r: r.decode().n_records, iter_raw_chunks(f, chunk_bytes=CHUNK_BYTES)):
                pass
    return {"read_MBps_1": one, "read_MBps_n": nbytes / (time.perf_counter() - t0) / 1e6, "read_threads": nt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3k,20k,60k")
    ap.add_argument("--methods", default="sparse,dense,minres")
    ap.add_argument("--keep", type=Path, default=None, help="folder for the generated files (kept)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per fit, seconds")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, args.method)))
        return 0
    base = args.keep or Path(tempfile.mkdtemp(prefix="align_bench_"))
    print("note: wall times on a shared 2-core machine; other jobs may inflate them")
    rows = []
    for size in args.sizes.split(","):
        n_params, n_tracks = SIZES[size]
        folder = base / size
        folder.mkdir(parents=True, exist_ok=True)
        steer = folder / "steer.txt"
        if not steer.exists():
            t0 = time.perf_counter()
            generate(folder, n_params, n_tracks)
            print(f"[{size}] generated in {time.perf_counter() - t0:.1f} s")
        for method in args.methods.split(","):
            if method == "dense" and n_params > 16000:
                print(f"[{size}] dense: skipped (n > 16000)")
                continue
            try:
                p = subprocess.run([sys.executable, __file__, "--run", str(steer), "--method", method],
                                   capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"[{size}] {method}: timed out after {args.timeout:.0f} s")
                continue
            if p.returncode:
                print(f"[{size}] {method}: failed\n{p.stderr[-2000:]}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["size"] = size
            rows.append(r)
            t = r["timings"]
            print(f"[{size}] {method:7s} n={r['n_params']} records={r['records']} file={r['bytes'] / 1e6:.0f} MB "
                  + " ".join(f"{k}={v:.2f}s" for k, v in t.items())
                  + f" peak={r['peak_rss_gb']:.2f} GB chi2/ndf={r['chi2_ndf']:.4f} threads={r['threads']}"
                  + f" | reading alone {r['read_MBps_1']:.0f} MB/s (1 thread),"
                  f" {r['read_MBps_n']:.0f} MB/s ({r['read_threads']} threads)"
                  + (f" pull_rms={r['pull_rms']:.3f}" if "pull_rms" in r else ""), flush=True)
    if args.keep is None:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
