"""Compare the payload contents of two conditions folders: ``python benchmarks/compare_payloads.py DIR_A DIR_B``.

A folder is either one local database (``database.txt`` + ``dbstore_*.root``) or a folder of them (one
subfolder per global tag, e.g. ``work/demo/conditions``); then the global tags present in both are
compared and any missing on one side is reported.  Per global tag the database.txt entries (name,
revision, IoV; in any order) must match, and every array of every payload must have the same keys, shape and dtype
and be equal to ``--rtol`` (default 1e-9) relative to the larger magnitude (NaNs must match too).  The
file bytes differ anyway (ROOT files carry a UUID and timestamps).

Prints one line per difference and a summary; exit code 0 when equal, 1 when not, 2 on unusable input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from b2luca.conditions import LocalDatabase, read_payload
from b2luca.errors import B2lucaError


def databases(root: Path) -> dict[str, Path]:
    """``{global tag name: folder}`` below ``root`` ("." when ``root`` itself is a database)."""
    if (root / "database.txt").is_file():
        return {".": root}
    found = {p.parent.name: p.parent for p in sorted(root.glob("*/database.txt"))}
    if not found:
        raise SystemExit(f"{root}: neither a database (database.txt) nor a folder of databases")
    return found


def compare_arrays(where: str, a: np.ndarray, b: np.ndarray, rtol: float) -> list[str]:
    """Differences between two arrays of one payload key (empty when equal to ``rtol``)."""
    if a.shape != b.shape:
        return [f"{where}: shape {a.shape} != {b.shape}"]
    if a.dtype != b.dtype:
        return [f"{where}: dtype {a.dtype} != {b.dtype}"]
    if a.dtype.kind not in "fc":
        if not np.array_equal(a, b):
            return [f"{where}: {int(np.sum(a != b))} of {a.size} values differ"]
        return []
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return [f"{where}: NaN at different positions ({int(nan_a.sum())} vs {int(nan_b.sum())})"]
    fa, fb = a[~nan_a], b[~nan_b]
    with np.errstate(invalid="ignore"):
        close = (fa == fb) | (np.abs(fa - fb) <= rtol * np.maximum(np.abs(fa), np.abs(fb)))
    if not np.all(close):
        bad_a, bad_b = fa[~close], fb[~close]
        with np.errstate(invalid="ignore"):
            rel = np.abs(bad_a - bad_b) / np.maximum(np.abs(bad_a), np.abs(bad_b))
        return [f"{where}: {int(np.sum(~close))} of {a.size} values differ, max relative difference "
                f"{float(np.nanmax(rel)):.3g}"]
    return []


def compare_databases(tag: str, dir_a: Path, dir_b: Path, rtol: float) -> tuple[list[str], int]:
    """Differences between two local databases, and the number of arrays compared."""
    problems: list[str] = []
    entries_a, entries_b = LocalDatabase(dir_a).entries(), LocalDatabase(dir_b).entries()
    # the order of the lines follows the order the calibrations finished in: not part of the contents
    lines_a = sorted((e.name, str(e.revision), str(e.iov)) for e in entries_a)
    lines_b = sorted((e.name, str(e.revision), str(e.iov)) for e in entries_b)
    if lines_a != lines_b:
        problems.append(f"{tag}: database.txt differs: {sorted(set(lines_a) ^ set(lines_b))}")
    by_key_b = {(e.name, str(e.revision)): e for e in entries_b}
    n_arrays = 0
    for ea in entries_a:
        eb = by_key_b.get((ea.name, str(ea.revision)))
        if eb is None:
            continue
        pa, pb = read_payload(ea.path), read_payload(eb.path)
        where = f"{tag}/{ea.name} rev {ea.revision}"
        if set(pa) != set(pb):
            problems.append(f"{where}: keys {sorted(pa)} != {sorted(pb)}")
        for key in sorted(set(pa) & set(pb)):
            n_arrays += 1
            problems += compare_arrays(f"{where} [{key}]", np.asarray(pa[key]), np.asarray(pb[key]), rtol)
    return problems, n_arrays


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir_a", type=Path)
    parser.add_argument("dir_b", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-9, help="relative tolerance (default 1e-9)")
    args = parser.parse_args(argv)
    try:
        dbs_a, dbs_b = databases(args.dir_a), databases(args.dir_b)
        problems = [f"global tag {t} only in {args.dir_a}" for t in sorted(set(dbs_a) - set(dbs_b))]
        problems += [f"global tag {t} only in {args.dir_b}" for t in sorted(set(dbs_b) - set(dbs_a))]
        n_arrays = 0
        for tag in sorted(set(dbs_a) & set(dbs_b)):
            found, n = compare_databases(tag, dbs_a[tag], dbs_b[tag], args.rtol)
            problems += found
            n_arrays += n
    except (OSError, B2lucaError) as exc:
        print(f"compare_payloads: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(line)
    tags = len(set(dbs_a) & set(dbs_b))
    print(f"{'EQUAL' if not problems else 'DIFFERENT'}: {n_arrays} arrays in {tags} global tag(s) compared "
          f"(rtol {args.rtol:g}), {len(problems)} difference(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
