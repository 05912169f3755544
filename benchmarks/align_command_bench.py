#!/usr/bin/env python
"""Whole commands, interleaved: ``b2luca align`` against pede's exact method (and another b2luca build).

Issue 15's small-problem target: at A3k the whole command ``b2luca align steer.txt`` (start-up, imports, the
data pass, the solve, the output, the exit) ≤ 0.6× pede's exact method (``unpackedLAPACK``) on the same files.
Each round runs every command once, back to back, each in its own scratch folder (links to the steering,
constraint and Mille files of FOLDER, as written by ``align_bench.py --keep``), and measures its wall time,
CPU time (user + system of the process and its threads) and peak memory; at the end the median and the range
of each, and of our/pede's ratio per round.  On a shared machine the wall times follow the load: compare the
ratios within a round, and the CPU times.

    python benchmarks/align_command_bench.py /tmp/ab/A3k --pede /tmp/pede/pede --rounds 5 \\
        --baseline /path/to/main/venv/bin/b2luca
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_timed(cmd: list[str], cwd: Path, timeout: float) -> dict:
    """Run ``cmd`` in ``cwd``: exit status, wall and CPU seconds, peak resident memory (GB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of the children is the largest of any child so far: exact for the first, a bound after
    return {"rc": p.returncode, "wall": wall, "cpu": cpu, "peak_gb": after.ru_maxrss / 1024**2,
            "tail": (p.stdout + p.stderr)[-300:]}


def scratch(folder: Path, parent: Path, name: str) -> Path:
    """A folder under ``parent`` with links to FOLDER's steering, constraint and data files."""
    d = parent / name
    d.mkdir()
    for f in folder.iterdir():
        if f.is_file() and f.suffix in (".txt", ".bin", ".gz"):
            (d / f.name).symlink_to(f.resolve())
    return d


def _summary(name: str, values: list[float], unit: str) -> str:
    return (f"{name}: median {statistics.median(values):.2f}{unit}, range {min(values):.2f}-{max(values):.2f}{unit}"
            f" (n={len(values)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="problem folder (steer_inversion.txt, steer_unpackedLAPACK.txt, data)")
    ap.add_argument("--pede", type=Path, default=None, help="pede executable (its exact method is the reference)")
    ap.add_argument("--b2luca", default=str(Path(sys.executable).with_name("b2luca")),
                    help="the b2luca command to measure (default: the one beside this Python)")
    ap.add_argument("--baseline", default=None, help="another b2luca command to compare with (e.g. main's)")
    ap.add_argument("--steering", default="steer_inversion.txt", help="our steering file in FOLDER")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    commands: dict[str, list[str]] = {}
    if args.pede is not None:
        commands["pede exact"] = [str(args.pede), "steer_unpackedLAPACK.txt"]
    if args.baseline:
        commands["baseline"] = [args.baseline, "align", args.steering, "--quiet"]
    commands["b2luca align"] = [args.b2luca, "align", args.steering, "--quiet"]
    work = Path(tempfile.mkdtemp(prefix="align_cmd_", dir=args.folder))
    results: dict[str, list[dict]] = {k: [] for k in commands}
    try:
        for i in range(args.rounds):
            for name, cmd in commands.items():
                d = scratch(args.folder, work, f"{i}_{name.replace(' ', '_')}")
                load = os.getloadavg()[0]
                r = run_timed(cmd, d, args.timeout)
                r["load"] = load
                results[name].append(r)
                print(f"round {i + 1} {name:13s} load {load:4.1f}: wall {r['wall']:6.2f} s, cpu {r['cpu']:5.2f} s, "
                      f"rc {r['rc']}" + ("" if r["rc"] == 0 else f" {r['tail']!r}"), flush=True)
                shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, rs in results.items():
        ok = [r for r in rs if r["rc"] == 0]
        if ok:
            print(_summary(f"{name} wall", [r["wall"] for r in ok], " s") + "; "
                  + _summary("cpu", [r["cpu"] for r in ok], " s"))
    if "pede exact" in results:
        for name in [k for k in results if k != "pede exact"]:
            pairs = [(o, p) for o, p in zip(results[name], results["pede exact"]) if o["rc"] == 0 and p["rc"] == 0]
            if pairs:
                print(_summary(f"{name} / pede exact, wall per round", [o["wall"] / p["wall"] for o, p in pairs], "")
                      + "; " + _summary("cpu", [o["cpu"] / p["cpu"] for o, p in pairs], ""))
    return 0 if all(r["rc"] == 0 for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
