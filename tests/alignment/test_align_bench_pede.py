"""benchmarks/align_bench.py's pede side, against stand-in pede executables (the real pede is not part of CI):
it runs pede in a scratch folder on the problem's own steering and data files, reads millepede.res, and
reports a pede that stops without a result (pede exits with status 0 on 'Too many rejects') as a failure."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "align_bench.py"


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("align_bench_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _problem(tmp_path: Path) -> Path:
    folder = tmp_path / "P"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"\0" * 16)
    (folder / "constraints.txt").write_text("Constraint 0.0\n11 1.0\n")
    for key in ("sparseMINRES", "unpackedLAPACK"):
        (folder / f"steer_{key}.txt").write_text(f"Cfiles\ndata.bin\nconstraints.txt\nmethod {key} 1 0.1\nend\n")
    return folder


def _standin(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "pede"
    exe.write_text(f"#!{sys.executable}\nimport os, sys\n{body}\n")
    exe.chmod(0o755)
    return exe


def test_pede_result_is_read_from_its_own_steering_and_files(bench, tmp_path: Path) -> None:
    folder = _problem(tmp_path)
    # the stand-in checks it runs on the problem's steering and data (linked into its scratch folder)
    exe = _standin(tmp_path, (
        "steer = sys.argv[1]\n"
        "assert steer == 'steer_unpackedLAPACK.txt', steer\n"
        "assert 'unpackedLAPACK' in open(steer).read()\n"
        "assert os.path.getsize('data.bin') == 16 and os.path.exists('constraints.txt')\n"
        "open('millepede.res', 'w').write('Parameter ! first line\\n 11 0.5 0.0\\n 12 -0.25 0.0\\n')\n"
        "print('Millepede II ending')"))
    out = bench.run_pede(exe, folder, "unpackedLAPACK", timeout=60)
    assert out["rc"] == 0, out
    assert list(out["labels"]) == [11, 12] and np.allclose(out["values"], [0.5, -0.25])
    assert out["wall_s"] > 0 and out["peak_rss_gb"] > 0
    assert not any(p.name.startswith("pede_") for p in folder.iterdir())  # scratch folder removed
    # values against our saved solution, in units of our sigma
    sol = tmp_path / "P_sparse.npz"
    np.savez(sol, labels=np.array([11, 12]), x=np.array([0.5, -0.20]), e=np.array([0.1, 0.1]))
    assert bench._pede_value_diff(sol, out["labels"], out["values"]) == pytest.approx(0.5)


def test_pede_stopping_without_result_is_a_failure(bench, tmp_path: Path) -> None:
    folder = _problem(tmp_path)
    exe = _standin(tmp_path, "print(' Too many rejects (>33.3%) - stop')")  # exit status 0, no millepede.res
    out = bench.run_pede(exe, folder, "unpackedLAPACK", timeout=60)
    assert out["rc"] != 0
    assert "no millepede.res" in out["tail"] and "Too many rejects" in out["tail"]
    exe = _standin(tmp_path, "sys.exit(3)")
    assert bench.run_pede(exe, folder, "sparseMINRES", timeout=60)["rc"] == 3


def test_print_rounding_bound(bench, tmp_path: Path) -> None:
    sol = tmp_path / "s.npz"
    np.savez(sol, labels=np.array([1, 2]), x=np.array([0.128124503, -3.0]), e=np.array([0.001, 1.0]))
    # 0.128124503 is printed 0.12812: 4.503e-6 / 1e-3
    assert bench._print_rounding(sol) == pytest.approx(4.503e-3, rel=1e-6)


def test_summary_table(bench, capsys: pytest.CaptureFixture[str]) -> None:
    ours = {"wall_s": 10.0, "command_wall_s": 12.0, "cpu_s": 15.0, "peak_rss_gb": 0.5}
    bench._print_summary({
        "B20k": {"ours": ours, "sparseMINRES": {"rc": 0, "wall_s": 20.0, "cpu_s": 30.0, "peak_rss_gb": 0.2},
                 "unpackedLAPACK": {"rc": 0, "wall_s": 50.0, "cpu_s": 75.0, "peak_rss_gb": 3.2,
                                    "max_dev_sigma": 1e-3, "print_rounding_sigma": 1e-3}},
        "C60k": {"ours": ours, "sparseMINRES": {"rc": -2}}})
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| B20k") or r.startswith("| C60k")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert cells[0][4:7] == ["0.50 (0.50)", "0.20 (0.24)", "0.20"]
    assert cells[1][2] == "failed" and cells[1][3].startswith("does not fit")
