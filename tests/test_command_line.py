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


def test_run_dry_run_changes_nothing(tmp_path, capsys):
    from bucket_helpers import make_bucket

    config = make_bucket(tmp_path)
    assert main(["run", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("CDCTimeZeros", "VXDCDCAlignment", "BeamSpot", "MakeRunDB", "ArchiveLogs:raw-0"):
        assert any(line.startswith("would run") and name in line for line in out.splitlines()), name
    assert "after CDCTimeZeros" in out  # the alignment waits for the CDC time zeros it depends on
    assert not (tmp_path / "work").exists() and not (tmp_path / "data").exists()


def test_run_rerun_of_unknown_calibration_is_a_usage_error(tmp_path, capsys):
    from bucket_helpers import make_bucket

    config = make_bucket(tmp_path)
    assert main(["run", str(config), "--rerun", "NoSuchCalibration", "--dry-run"]) == 2
    assert "NoSuchCalibration" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
