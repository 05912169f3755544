"""Benchmark of a small raw file's fixed cost: read and write, b2luca's layout against the earlier ones.

    python benchmarks/rootio_bench.py [--events 60] [--repeat 50] [--tag mumu_tight_or_highm_calib]

Simulates one toy raw file of ``--events`` events (the 200-run demo bucket has 16-60 events per file) and
times, in CPU milliseconds per file, ``write_raw`` / ``read_raw`` / ``read_trees`` of the ``cdc`` table
alone, for three layouts, all read through the same ``read_trees``:

- ``container``: b2luca's layout (issue 15): one TTree, one byte branch, all tables' packed rows;
- ``tree/table``: one TTree per table with one packed-rows branch (issue 15's first step);
- ``per column``: one TTree per table, one branch per column (before issue 15).

A file's fixed cost in uproot is per TTree, per branch and per basket; ``uproot floor`` is the cost of
opening a file (``uproot.open`` and closing it, no tree read) and of writing one empty tree.
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
from b2luca.rootio import COMPRESSION, PACKED_BRANCH, PACKED_TITLE, pack_table, read_trees  # noqa: E402
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


def _write_tree_per_table(path: Path, trees: dict[str, dict[str, np.ndarray]]) -> None:
    """The layout of issue 15's first step: one TTree per table, one branch of packed rows."""
    with uproot.recreate(path, compression=COMPRESSION) as out:
        for name, branches in RAW_BRANCHES.items():
            cols = {b: np.asarray(trees.get(name, {}).get(b, np.zeros(0)), dtype=dt) for b, dt in branches.items()}
            leaflist, rows = pack_table(cols)
            tree = out.mktree(name, {PACKED_BRANCH: np.dtype((np.uint8, rows.shape[1:]))}, title=PACKED_TITLE + leaflist)
            if len(rows):
                tree.extend({PACKED_BRANCH: rows})


def _open_only(path: Path) -> None:
    with uproot.open(path, handler=uproot.MemmapSource):
        pass


def _write_empty(path: Path) -> None:
    with uproot.recreate(path, compression=COMPRESSION) as out:
        out.mktree("t", {"b": np.uint8})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--tag", default="mumu_tight_or_highm_calib")
    args = parser.parse_args()
    geom = nominal_geometry()
    raw = simulate_sample(args.tag, args.events, np.random.default_rng(1), make_truth(1, geom), geom).raw
    writers = {"container": write_raw, "tree/table": _write_tree_per_table, "per column": _write_per_column}
    with tempfile.TemporaryDirectory(prefix="b2luca-rootio-bench-") as tmp:
        rows = {}
        for name, writer in writers.items():
            path = Path(tmp) / f"{name.replace('/', '_').replace(' ', '_')}.root"
            rows[name] = (_cpu_ms(lambda w=writer, p=path: w(p, raw), args.repeat),
                          _cpu_ms(lambda p=path: read_raw([p]), args.repeat),
                          _cpu_ms(lambda p=path: read_trees(p, {"cdc": None}), args.repeat), path.stat().st_size)
            for tree in RAW_BRANCHES:  # every layout holds the same values
                a, b = read_raw([Path(tmp) / "container.root"])[tree], read_raw([path])[tree]
                assert all(np.array_equal(a[k], b[k]) for k in a), (name, tree)
        empty = Path(tmp) / "empty.root"
        floor = (_cpu_ms(lambda: _write_empty(empty), args.repeat), _cpu_ms(lambda: _open_only(empty), args.repeat))
    n_branches = sum(len(b) for b in RAW_BRANCHES.values())
    print(f"one {args.tag} raw file of {args.events} events, {len(RAW_BRANCHES)} tables, {n_branches} columns "
          f"(CPU ms per file, {args.repeat} repeats):")
    print(f"{'layout':14s} {'write':>8s} {'read':>8s} {'read cdc':>9s} {'bytes':>9s}")
    for name, (w, r, c, size) in rows.items():
        print(f"{name:14s} {w:8.2f} {r:8.2f} {c:9.2f} {size:9d}")
    print(f"{'uproot floor':14s} {floor[0]:8.2f} {floor[1]:8.2f}  (write one empty tree / open and close a file)")


if __name__ == "__main__":
    main()
