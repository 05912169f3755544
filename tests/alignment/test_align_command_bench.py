"""benchmarks/align_command_bench.py: runs the real ``b2luca align`` and a stand-in pede, round by round, each in
a scratch folder of the problem's files, and prints the medians and our/pede ratios."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "align_command_bench.py"


def test_rounds_and_ratios(toy, tmp_path: Path) -> None:
    folder = tmp_path / "P"
    shutil.copytree(toy.folder, folder)
    (folder / "steer_unpackedLAPACK.txt").write_text(toy.steering.read_text())
    pede = tmp_path / "pede"
    pede.write_text(f"#!{sys.executable}\nimport os, sys\n"
                    "assert sys.argv[1] == 'steer_unpackedLAPACK.txt' and os.path.islink(sys.argv[1])\n"
                    "open('millepede.res', 'w').write('Parameter\\n')\n")
    pede.chmod(0o755)
    b2luca = Path(sys.executable).with_name("b2luca")
    p = subprocess.run([sys.executable, str(BENCH), str(folder), "--pede", str(pede), "--rounds", "2",
                        "--steering", toy.steering.name, "--b2luca", str(b2luca)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stdout.count("b2luca align  load") == 2 and p.stdout.count("pede exact    load") == 2
    assert "b2luca align / pede exact, wall per round: median" in p.stdout
    assert "(n=2)" in p.stdout
    assert not any(x.name.startswith("align_cmd_") for x in folder.iterdir())  # scratch folders removed
