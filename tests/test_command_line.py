"""The b2luca command: plan printing and exit codes (0 ok, 2 usage/config error)."""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from b2luca import __version__
from b2luca.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def test_check_prints_plan_with_stages(capsys):
    assert main(["check", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "stage 1/3: raw calibrations" in out and "group 1:" in out
    assert "cDST production" in out and "stage 3/3: cDST calibrations" in out
    assert "@cdc_expert" in out and "staging_pxd_demo -> PXDMasks" in out


def test_dag_dot(capsys):
    assert main(["dag", str(DEMO), "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph") and '"CDCTimeZeros" -> "VXDCDCAlignment"' in out


def test_config_error_exit_2(tmp_path, capsys):
    doc = yaml.safe_load(DEMO.read_text())
    doc["batch"]["workers"] = "many"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["check", str(bad)]) == 2
    assert f"{bad}: batch.workers: must be of type integer" in capsys.readouterr().err


def test_catalogue_error_exit_2(tmp_path, capsys):
    calibrations = tmp_path / "calibrations"
    shutil.copytree(REPO / "calibrations", calibrations, ignore=shutil.ignore_patterns("__pycache__"))
    # A second script declaring an existing calibration's name.
    (calibrations / "svd_time_offsets_copy.py").write_text((calibrations / "svd_time_offsets.py").read_text())
    doc = yaml.safe_load(DEMO.read_text())
    doc["calibrations"]["directory"] = str(calibrations)
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "SVDTimeOffsets" in err and "svd_time_offsets_copy.py" in err and "svd_time_offsets.py" in err


def test_console_script_version_and_usage():
    exe = Path(sys.executable).parent / "b2luca"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"b2luca {__version__}"
    assert subprocess.run([str(exe), "frobnicate"], capture_output=True, text=True).returncode == 2
