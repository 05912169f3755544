"""The ``align`` command seam (add_arguments/run) and the millepede.res writer."""

from __future__ import annotations

import argparse
import json


import numpy as np

from b2luca.alignment import read_millepede_res, solve_steering
from b2luca.alignment.cli import add_arguments, run


def _args(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_writes_res_and_summary(toy, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(_args(str(toy.steering), "--method", "sparse", "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert "Sum(Chi^2)/Sum(Ndf)" in printed and "time per phase" in printed
    res = read_millepede_res(out / "millepede.res")
    direct = solve_steering(toy.steering, method="sparse")
    assert np.array_equal(res["label"], direct.labels)
    # 5 significant digits as pede prints
    assert np.allclose(res["value"], direct.values, rtol=1e-4, atol=1e-12)
    assert np.allclose(res["error"], direct.errors, rtol=1e-4)
    summary = json.loads((out / "align_summary.json").read_text())
    assert summary["exact"] and summary["records_used"] == direct.n_used


def test_cli_minres_has_no_error_column(toy, tmp_path):
    out = tmp_path / "m"
    assert run(_args(str(toy.steering), "--method", "fullMINRES", "--out", str(out), "--quiet")) == 0
    res = read_millepede_res(out / "millepede.res")
    assert np.all(np.isnan(res["error"])) and np.all(np.isfinite(res["difference"]))


def test_cli_bad_input_exit_2(tmp_path, capsys):
    (tmp_path / "s.txt").write_text("Cfiles\nmissing.bin\nend\n")
    assert run(_args(str(tmp_path / "s.txt"), "--out", str(tmp_path))) == 2
    assert "missing.bin" in capsys.readouterr().err
    (tmp_path / "bad.bin").write_bytes(b"\x07\x00\x00\x00" * 5)
    (tmp_path / "s2.txt").write_text("Cfiles\nbad.bin\nend\n")
    assert run(_args(str(tmp_path / "s2.txt"), "--out", str(tmp_path))) == 2
    assert "bad.bin" in capsys.readouterr().err
    (tmp_path / "s3.txt").write_text("method nonsense\n")
    assert run(_args(str(tmp_path / "s3.txt"), "--out", str(tmp_path))) == 2


def test_cli_singular_exit_1(toy, tmp_path):
    # no constraints: the toy's null modes make the system singular
    steer = tmp_path / "s.txt"
    steer.write_text(f"Cfiles\n{toy.datafile}\nmethod inversion 1 0.1\nend\n")
    assert run(_args(str(steer), "--out", str(tmp_path), "--quiet")) == 1


def test_alignment_library_does_not_import_the_task_graph():
    """b2luca.alignment must stay usable without luigi (issue 4): importing it loads no task-graph module."""
    import subprocess
    import sys

    code = ("import sys, b2luca.alignment, b2luca.alignment.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('luigi', 'b2luigi', 'gitlab')]; "
            "sys.exit(repr(bad) if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


_CONSOLE = """
import atexit, sys
atexit.register(lambda: print("TEARDOWN", flush=True))
from b2luca.cli import main
sys.argv = ["b2luca", *sys.argv[1:]]
sys.exit(main())
"""


def test_console_align_ends_without_teardown(toy, tmp_path):
    """The ``b2luca align`` console process ends at once after writing (no atexit/teardown), with its exit
    status and its printout complete; called with an argv list (in-process), it returns."""
    import subprocess
    import sys

    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", _CONSOLE, "align", str(toy.steering), "--method", "sparse", "--out",
                        str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "TEARDOWN" not in p.stdout  # os._exit: the interpreter's teardown skipped
    assert "Sum(Chi^2)/Sum(Ndf)" in p.stdout and p.stdout.rstrip().endswith("millepede.res")  # flushed
    assert read_millepede_res(out / "millepede.res")["label"].size > 0
    bad = subprocess.run([sys.executable, "-c", _CONSOLE, "align", str(tmp_path / "missing.txt")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "TEARDOWN" not in bad.stdout and "cannot read" in bad.stderr
    # the same main() with an explicit argv (tests, embedding): returns, teardown as usual
    inproc = subprocess.run([sys.executable, "-c", _CONSOLE.replace("main()", "main(sys.argv[1:])"), "align",
                             str(toy.steering), "--out", str(tmp_path / "o2"), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert inproc.returncode == 0 and "TEARDOWN" in inproc.stdout


def test_exit_now_fails_when_the_printout_cannot_be_written():
    """exit_now skips the interpreter's teardown, but not its verdict on the standard streams: a final flush that
    fails (a full disk under ``> log``) is exit status 120, as Python's own exit reports it; a closed pipe is not."""
    import subprocess
    import sys

    import os

    probe = "from b2luca.alignment.cli import exit_now; print('summary'); exit_now(0)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the printout waits in the buffer
    with open("/dev/full", "w") as full:
        lost = subprocess.run([sys.executable, "-c", probe], stdout=full, stderr=subprocess.PIPE, env=env, timeout=120)
    assert lost.returncode == 120, lost.stderr[-2000:]
    ok = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and ok.stdout == "summary\n"


_GC_PROBE = """
import gc, sys
import b2luca.cli as cli
seen = []  # collections from main()'s start until numba is imported (in the fit)
gc.callbacks.append(lambda phase, info: phase == "start" and "numba" not in sys.modules and seen.append(1))
cmd_align = cli.cmd_align
def probe(args):
    from b2luca.alignment import cli as align_cli
    print("COLLECTIONS_BEFORE_FIT", len(seen), "ENABLED", gc.isenabled(), flush=True)
    solve = align_cli.solve
    def solve_probe(*a, **k):
        print("ENABLED_IN_FIT", gc.isenabled(), flush=True)
        return solve(*a, **k)
    align_cli.solve = solve_probe
    return cmd_align(args)
cli.cmd_align = probe
sys.argv = ["b2luca", *sys.argv[1:]]
sys.exit(cli.main())
"""


def test_console_align_imports_without_gc_then_enables_it(toy, tmp_path):
    """The console ``b2luca align`` runs its imports without the cyclic GC (no collection before the fit
    starts) and has it on again during the fit (frozen start-up objects)."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _GC_PROBE, "align", str(toy.steering), "--out", str(tmp_path / "o"),
                        "--quiet"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "COLLECTIONS_BEFORE_FIT 0 ENABLED False" in p.stdout, p.stdout
    assert "ENABLED_IN_FIT True" in p.stdout, p.stdout
