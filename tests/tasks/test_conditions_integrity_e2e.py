"""A damaged prompt database through the production path: status names the damage, run is not SUCCESS,
``--rerun`` stores a new revision and the bucket is whole again."""

from __future__ import annotations

import pytest

from b2luca.cli import main
from b2luca.config import load_config
from b2luca.iov import ExpRun
from b2luca.conditions import LocalDatabase
from b2luca.tasks.driver import run_bucket

pytestmark = pytest.mark.slow


def test_damaged_payload_status_run_and_rerun(simulated_bucket, tmp_path, capsys):
    config = simulated_bucket.config(tmp_path, select=["PXDHotDeadPixels"])
    cfg = load_config(config)
    lines: list[str] = []
    assert run_bucket(cfg, workers=2, echo=lines.append).exit_code == 0, "\n".join(lines)
    prompt = LocalDatabase(cfg.conditions.directory / cfg.conditions.prompt_global_tag)
    entry = prompt.lookup("PXDMasks", ExpRun(cfg.bucket.experiment, cfg.bucket.first_run))
    assert main(["status", str(config)]) == 0
    assert "every payload intact" in capsys.readouterr().out

    entry.path.write_bytes(entry.path.read_bytes()[:200])  # truncated, as after a disk problem
    assert main(["status", str(config)]) == 1
    out = capsys.readouterr().out
    assert "conditions database DAMAGED" in out and f"{entry.path.name}: unreadable" in out

    lines.clear()
    assert run_bucket(cfg, workers=2, echo=lines.append).exit_code == 1
    text = "\n".join(lines)
    assert "bucket demo: FAILED" in text and entry.path.name in text and "--rerun" in text

    lines.clear()
    assert run_bucket(cfg, workers=2, rerun=["PXDHotDeadPixels"], echo=lines.append).exit_code == 0, "\n".join(lines)
    assert "retired damaged line of the prompt global tag: dbstore/PXDMasks" in "\n".join(lines)
    new = prompt.lookup("PXDMasks", ExpRun(cfg.bucket.experiment, cfg.bucket.first_run))
    assert new.revision > entry.revision and new.path.is_file()
    assert main(["status", str(config)]) == 0

    with open(prompt.database_txt, "a") as handle:
        handle.write("dbstore/../../x 1 26,1,-1,-1\n")
    assert main(["status", str(config)]) == 1
    assert "payload name '../../x' must be an identifier" in capsys.readouterr().out
