"""Issue 17 item 8: the same inputs and configuration give identical payload contents, whatever the
string-hash seed (set iteration order) and the BLAS thread count of the calibration process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from b2luca.conditions import LocalDatabase

REPO = Path(__file__).resolve().parents[2]


def _seeds_with_different_set_orders(names: list[str]) -> list[int]:
    """Two PYTHONHASHSEED values under which a frozenset of ``names`` iterates in different orders."""
    orders: dict[str, int] = {}
    for seed in range(64):
        out = subprocess.run([sys.executable, "-c", f"print(list(frozenset({sorted(names)!r})))"], text=True,
                             capture_output=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}, check=True)
        orders.setdefault(out.stdout, seed)
        if len(orders) == 2:
            return list(orders.values())
    raise AssertionError("no two hash seeds give different orders")


def _calibrate(work: Path, seed: int, blas_threads: int) -> dict[str, dict[str, np.ndarray]]:
    """Run the calibration of work/caf_config.json in a fresh process, as the native runner does."""
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "OPENBLAS_NUM_THREADS": str(blas_threads),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "b2luca.runners.native_job", "calibrate", "caf_config.json",
                           "input_data.json"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = next((work / "caf_outputdb_results").iterdir())
    db = LocalDatabase(name)
    out = {e.name: db.read(e) for e in db.entries()}
    for path in (work / "caf_outputdb_results").iterdir():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    return out


def _assert_identical(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]) -> None:
    assert sorted(a) == sorted(b)
    for payload in a:
        assert sorted(a[payload]) == sorted(b[payload])
        for key in a[payload]:
            assert np.array_equal(a[payload][key], b[payload][key], equal_nan=True), f"{payload}.{key} differs"


def test_cdc_time_zeros_do_not_depend_on_the_hash_seed(bucket, job_factory, script, tmp_path):
    cal = script("cdc_time_zeros")
    names = sorted(cal.settings.input_data_names)
    assert len(names) > 1  # a frozenset of several names: its iteration order follows the hash seed
    job_factory(cal, bucket, tmp_path / "job", {n: bucket.raw_entries(n) for n in names})
    first, second = _seeds_with_different_set_orders(names)
    _assert_identical(_calibrate(tmp_path / "job", first, 1), _calibrate(tmp_path / "job", second, 2))


def test_alignment_does_not_depend_on_blas_threads_or_hash_seed(bucket, job_factory, script, tmp_path):
    cal = script("vxdcdc_alignment")
    names = sorted(cal.settings.input_data_names)
    job_factory(cal, bucket, tmp_path / "job", {n: bucket.raw_entries(n) for n in names},
                overrides={"cosmic_calib.max_processed_events_per_file": 100,
                           "mumu_tight_or_highm_calib.max_processed_events_per_file": 150})
    one = _calibrate(tmp_path / "job", 1, 1)
    two = _calibrate(tmp_path / "job", 2, 2)
    _assert_identical(one, two)
    assert np.any(one["VXDAlignment"]["params"] != 0)  # a real fit, not the nominal constants
