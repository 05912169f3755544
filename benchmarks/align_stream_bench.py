#!/usr/bin/env python
"""Streaming data pass at Belle II scale: ~10M Mille records in one fit, bounded memory, 50M projected.

The records come from the files of a reference problem (``gen_barrel.py``, e.g. C60k: 59,664 parameters,
954k records, 1.7 GB) listed ``--repeat`` times in one steering file, so the data pass streams
repeat x records from disk (or the page cache) through the real reader and assembler; the geometry, and so
the global matrix, stays the one of the problem. Each fit runs in a fresh subprocess (``align_bench.py
--run``): time per phase, CPU time and peak memory per phase. With ``--repeat 1`` measured too (default), the
time per record is the slope between the two runs, and the 50M-record time is projected from it.

    python benchmarks/align_stream_bench.py --data /tmp/ab/C60k --repeat 11
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "align_bench.py"


def steering(data: Path, repeat: int, folder: Path) -> Path:
    """A steering file in ``folder`` listing the data files of ``data`` ``repeat`` times, same constraints."""
    from b2luca.alignment import read_steering

    src = data / "steer_inversion.txt"
    st = read_steering(src)
    files = [str(Path(f).resolve()) for f in list(st.cfiles)] * repeat
    out = folder / f"steer_x{repeat}.txt"
    out.write_text("Cfiles\n" + "\n".join(files) + f"\n{(data / 'constraints.txt').resolve()}\n"
                   "method inversion 1 0.1\nentries 10\nend\n")
    return out


def fit(steer: Path, timeout: float) -> dict:
    p = subprocess.run([sys.executable, str(BENCH), "--run", str(steer), "--method", "sparse"],
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        raise SystemExit(f"fit of {steer} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder of a gen_barrel problem (steer_inversion.txt)")
    ap.add_argument("--repeat", type=int, default=11, help="times the data files are listed (11 x C60k: 10.5M)")
    ap.add_argument("--no-base", action="store_true", help="skip the single-pass reference fit")
    ap.add_argument("--project", type=float, default=50e6, help="records for the projection")
    ap.add_argument("--timeout", type=float, default=7200.0)
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"note: shared machine, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="align_stream_") as tmp:
        for rep in ([] if args.no_base else [1]) + [args.repeat]:
            r = fit(steering(args.data, rep, Path(tmp)), args.timeout)
            rows[rep] = r
            t = r["timings"]
            pas = t.get("read", 0.0) + t.get("assemble", 0.0)
            print(f"x{rep}: records={r['records']:,} file bytes={r['bytes'] / 1e9:.1f} GB | data pass {pas:.1f} s "
                  f"({r['records'] / pas / 1e3:.0f} k records/s), total {t['total']:.1f} s, cpu {r['cpu_s']:.0f} s | "
                  "peak memory per phase: " + " ".join(f"{k}={v:.2f}GB" for k, v in r["phase_peak_gb"].items())
                  + f" | process peak {r['peak_rss_gb']:.2f} GB", flush=True)
    if len(rows) == 2:
        a, b = rows[1], rows[args.repeat]

        def pas(r: dict) -> float:
            return r["timings"].get("read", 0.0) + r["timings"].get("assemble", 0.0)

        slope = (pas(b) - pas(a)) / (b["records"] - a["records"])
        cpu_slope = (b["cpu_s"] - a["cpu_s"]) / (b["records"] - a["records"])  # CPU: less sensitive to load
        print(f"CPU {cpu_slope * 1e6:.1f} us/record -> {args.project / 1e6:.0f}M records: "
              f"{cpu_slope * args.project:.0f} CPU s for the data pass")
        fixed = b["timings"]["total"] - pas(b)
        proj = slope * args.project
        print(f"slope {slope * 1e6:.2f} us/record (data pass) -> {args.project / 1e6:.0f}M records: data pass "
              f"{proj:.0f} s + solve {fixed:.0f} s = {proj + fixed:.0f} s on this machine and load; peak memory "
              f"{b['peak_rss_gb']:.2f} GB at {b['records'] / 1e6:.1f}M records vs {a['peak_rss_gb']:.2f} GB at "
              f"{a['records'] / 1e6:.2f}M (bounded: it does not grow with the records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
