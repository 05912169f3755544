"""The track fit's compiled kernels (numba) are loaded on the first fit or by ``fit.preload()``, not at import:
commands that never fit import no numba, and a failure to load them is one error at the fit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import b2luca.reco
from b2luca.errors import KernelLoadError
from b2luca.reco import fit as F
from b2luca.reco.robust import fit_robust

_PROBE = """
import json, sys
import b2luca.cli, b2luca.tasks.driver, b2luca.production, b2luca.reco.fit
before = "numba" in sys.modules
b2luca.reco.fit.preload()
print(json.dumps({"before": before, "after": "numba" in sys.modules}))
"""


def test_driver_imports_no_numba_until_preload():
    p = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"before": False, "after": True}  # the probe sees numba once the kernels are loaded


@pytest.fixture(scope="module")
def small(tmp_path_factory, simulated_measurements):
    c, meas = simulated_measurements(tmp_path_factory.mktemp("kload"), 5, (("mumu_tight_or_highm_calib", 20),), 3)
    return c, meas["mumu_tight_or_highm_calib"]


def test_kernels_that_cannot_load_give_one_error_at_the_fit(small, monkeypatch):
    c, meas = small
    monkeypatch.setitem(sys.modules, "numba", None)  # ``import numba`` fails, as numba's cache set-up can
    monkeypatch.delitem(sys.modules, "b2luca.reco._kernels", raising=False)
    monkeypatch.delattr(b2luca.reco, "_kernels", raising=False)
    monkeypatch.setattr(F, "_K", None)
    F.preload()  # swallowed: left for the fit to report
    with pytest.raises(KernelLoadError, match="NUMBA_CACHE_DIR"):
        F.fit_tracks(meas, c, n_iter=2)
    with pytest.raises(KernelLoadError, match="NUMBA_CACHE_DIR"):  # not taken for bad candidates and bisected
        fit_robust(meas, c)


def test_fit_loads_the_kernels(small):
    c, meas = small
    fr = F.fit_tracks(meas, c, n_iter=2)
    assert F._K is not None and np.all(np.isfinite(fr.params[fr.ok]))
