"""Opt-in: the basf2 runner against the real basf2 tools, when ``b2caf-prompt-run`` (not the stand-in) is on PATH.

Runs ``b2caf-prompt-run Local caf_config.json input_data.json --dry-run`` for basf2's own ``example_simple.py``
through :class:`Basf2Runner`; ``B2LUCA_BASF2_SETUP`` may hold the setup text (e.g. ``source b2setup <release>``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from b2luca.config import Basf2RunnerConfig, RunnerConfig
from b2luca.runners import Basf2Runner, log_tail

from .conftest import STANDINS

REAL = shutil.which("b2caf-prompt-run")
pytestmark = pytest.mark.skipif(REAL is None or Path(REAL).resolve().parent == STANDINS,
                                reason="basf2's b2caf-prompt-run is not on PATH")


def test_real_b2caf_prompt_run_dry_run(tmp_path):
    (tmp_path / "caf_config.json").write_text(json.dumps({
        "caf_script": "example_simple.py", "database_chain": [], "backend_args": {},
        "requested_iov": [0, 1, 0, 1], "expert_config": {}}))
    (tmp_path / "input_data.json").write_text(json.dumps({"physics": []}))
    runner = Basf2Runner(RunnerConfig(type="basf2", basf2=Basf2RunnerConfig(
        setup=os.environ.get("B2LUCA_BASF2_SETUP", ""), heartbeat=1)))
    argv = runner.wrap([REAL, "Local", "caf_config.json", "input_data.json", "--dry-run"])
    from b2luca.runners.base import child_environment, run_logged

    result = run_logged(argv, cwd=tmp_path, log_path=tmp_path / "caf.log", env=child_environment())
    assert result.ok, log_tail(result.log_path)
