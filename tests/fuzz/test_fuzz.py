"""Fuzz suite: seeded mutations of every input b2luca reads; each case a clear error or a correct success.

Each kind runs in a worker process (fuzz_worker.py) with an address-space limit of its size after imports
plus 1 GiB and a limit of 10 s CPU time per case. Counts are printed (``pytest -s``) and asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("fuzz_worker.py")
CASES = {"yaml": 1000, "mille": 500, "conditions": 200, "rundb": 200}
SEED = 20261207


@pytest.mark.parametrize("kind", list(CASES))
def test_fuzz(kind, tmp_path):
    proc = subprocess.run([sys.executable, str(WORKER), kind, str(CASES[kind]), str(SEED), str(tmp_path)],
                          capture_output=True, text=True, timeout=550)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fuzz {kind}: {out['cases']} cases: {out['errors']} clear errors, {out['ok']} correct successes, "
          f"{len(out['failures'])} failures; slowest case {out['slowest_s']:.2f} s CPU, peak RSS {out['peak_rss_mb']:.0f} MB")
    assert out["cases"] == CASES[kind]
    assert not out["failures"], "\n".join(out["failures"][:15])
    assert out["slowest_s"] < 10 and out["peak_rss_mb"] < 1024
    assert out["errors"] > 0 and out["ok"] > 0  # the mutations reach both outcomes
