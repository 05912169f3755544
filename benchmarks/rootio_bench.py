"""Benchmark of a small raw file's fixed cost: read and write, packed tables against one branch per column.

    python benchmarks/rootio_bench.py [--events 60] [--repeat 50] [--tag mumu_tight_or_highm_calib]

Simulates one toy raw file of ``--events`` events (the 200-run demo bucket has 16-60 events per file) and
times, in CPU milliseconds per file, ``write_raw`` / ``read_raw`` (b2luca's packed tables: one TTree per
table, one branch) against the layout used before issue 15 (one branch per column, written with uproot
directly and read through the same ``read_trees``). A file's fixed cost in uproot is per TTree and per
branch, so the packed layout costs about one branch per table instead of one per column.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import uproot

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from b2luca.reco.geometry import nominal_geometry  # noqa: E402
from b2luca.reco.raw import RAW_BRANCHES, read_raw, write_raw  # noqa: E402
from b2luca.sim.simulate import simulate_sample  # noqa: E402
from b2luca.sim.truth import make_truth  # noqa: E402


def _cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return 1000 * (time.process_time() - start) / repeat


def _write_per_column(path: Path, trees: dict[str, dict[str, np.ndarray]]) -> None:
    """The layout before issue 15: one TTree per table, one branch per column."""
    with uproot.recreate(path) as out:
        for name, branches in RAW_BRANCHES.items():
            cols = {b: np.asarray(trees.get(name, {}).get(b, np.zeros(0)), dtype=dt) for b, dt in branches.items()}
            tree = out.mktree(name, {b: a.dtype for b, a in cols.items()})
            if len(next(iter(cols.values()))):
                tree.extend(cols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--tag", default="mumu_tight_or_highm_calib")
    args = parser.parse_args()
    geom = nominal_geometry()
    raw = simulate_sample(args.tag, args.events, np.random.default_rng(1), make_truth(1, geom), geom).raw
    with tempfile.TemporaryDirectory(prefix="b2luca-rootio-bench-") as tmp:
        packed, per_column = Path(tmp) / "packed.root", Path(tmp) / "per_column.root"
        rows = {}
        rows["packed"] = (_cpu_ms(lambda: write_raw(packed, raw), args.repeat),
                          _cpu_ms(lambda: read_raw([packed]), args.repeat), packed.stat().st_size)
        rows["per column"] = (_cpu_ms(lambda: _write_per_column(per_column, raw), args.repeat),
                              _cpu_ms(lambda: read_raw([per_column]), args.repeat), per_column.stat().st_size)
        for tree in RAW_BRANCHES:  # both layouts hold the same values
            a, b = read_raw([packed])[tree], read_raw([per_column])[tree]
            assert all(np.array_equal(a[k], b[k]) for k in a), tree
    n_branches = sum(len(b) for b in RAW_BRANCHES.values())
    print(f"one {args.tag} raw file of {args.events} events, {len(RAW_BRANCHES)} tables, {n_branches} columns "
          f"(CPU ms per file, {args.repeat} repeats):")
    print(f"{'layout':12s} {'write':>8s} {'read':>8s} {'bytes':>9s}")
    for name, (w, r, size) in rows.items():
        print(f"{name:12s} {w:8.2f} {r:8.2f} {size:9d}")


if __name__ == "__main__":
    main()
