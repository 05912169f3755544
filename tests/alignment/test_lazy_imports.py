"""``b2luca align`` starts lean: no luigi, pandas, matplotlib, task graph or bucket configuration, and no numba
extension (awkward's) although its compiled kernels run."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("luigi", "b2luigi", "pandas", "matplotlib", "torch", "b2luca.tasks", "b2luca.config", "jsonschema", "awkward",
         "uproot")

_PROBE = """
import json, sys
from b2luca.cli import main
rc = main(["align", sys.argv[1], "--method", "sparse", "--out", sys.argv[2], "--quiet"])
heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in json.loads(sys.argv[3])))
print(json.dumps({"rc": rc, "heavy": heavy, "kernels": "b2luca.alignment._kernels" in sys.modules}))
"""


def test_align_command_imports_no_task_graph(toy, tmp_path):
    p = subprocess.run([sys.executable, "-c", _PROBE, str(toy.steering), str(tmp_path / "out"), json.dumps(HEAVY)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0
    assert out["heavy"] == [], f"b2luca align imported {out['heavy']}"
    assert out["kernels"], "the probe must run the compiled kernels (numba's extensions load at their first use)"
    assert (tmp_path / "out" / "millepede.res").exists()


def test_probe_sees_heavy_imports(tmp_path):
    """The probe can fail: importing the bucket configuration is seen."""
    code = "import json, sys; import b2luca.config; print(json.dumps(sorted(m for m in sys.modules if m in %r)))" % (
        HEAVY,)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "b2luca.config" in json.loads(p.stdout)
