"""``b2luca`` exit codes, one test per class: 2 for the user's mistakes, 1 for failures while working,
1 plus a traceback file for a bug.  Where it is cheap the mistake is real and goes through the
production code path; every error class is also checked through ``cli.main``'s single ``except``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import b2luca.cli
import b2luca.config
from b2luca import errors
from b2luca.cli import main

USER_ERRORS = [errors.ConfigError, errors.CatalogueError, errors.SettingsRepoError, errors.ReportConfigError,
               errors.UsageError]
WORK_ERRORS = [errors.DataError, errors.RunDBError, errors.RunnerError, errors.ProductionError,
               errors.CalibrationFailed]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("b2luca: "), err
    return err


@pytest.mark.parametrize("error,code", [(e, 2) for e in USER_ERRORS] + [(e, 1) for e in WORK_ERRORS],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_error_class_maps_to_its_exit_code(monkeypatch, capsys, error, code):
    def fail(path: str) -> None:
        raise error(f"{path}: something is wrong")

    monkeypatch.setattr(b2luca.config, "load_config", fail)
    assert main(["check", "bucket.yaml"]) == code
    assert _one_error_line(capsys) == "b2luca: error: bucket.yaml: something is wrong"


def test_unexpected_exception_is_one_line_and_a_traceback_file(monkeypatch, capsys):
    def bug(path: str) -> None:
        {}["missing"]

    monkeypatch.setattr(b2luca.config, "load_config", bug)
    assert main(["check", "bucket.yaml"]) == 1
    line = _one_error_line(capsys)
    match = re.fullmatch(r"b2luca: internal error: KeyError: 'missing' \(traceback written to (.+)\)", line)
    assert match, line
    written = Path(match.group(1))
    try:
        text = written.read_text()
        assert text.startswith("Traceback") and "in bug" in text and "KeyError" in text
    finally:
        written.unlink()


# --- exit code 2: the user's mistakes, for real ---------------------------------------------------
def test_config_mistake(bucket_config, capsys):
    config = bucket_config(changes={"batch.workers": "many"})
    assert main(["check", str(config)]) == 2
    assert "batch.workers: must be of type integer" in _one_error_line(capsys)


def test_catalogue_mistake(bucket_config, capsys):
    config = bucket_config(select=["NoSuchCalibration"])
    assert main(["check", str(config)]) == 2
    assert "NoSuchCalibration" in _one_error_line(capsys)


def test_settings_repository_mistake(simulated_bucket, tmp_path, capsys):
    config = simulated_bucket.config(tmp_path, changes={"settings_repository": {"url": str(tmp_path / "no-repo")}})
    assert main(["run", str(config)]) == 2
    assert "no-repo" in _one_error_line(capsys)


def test_report_configuration_mistake(bucket_config, monkeypatch, capsys):
    monkeypatch.delenv("B2LUCA_TEST_UNSET_TOKEN", raising=False)
    config = bucket_config(changes={"report.transport": "gitlab", "report.gitlab": {
        "url": "https://gitlab.invalid", "project": "calib/prompt", "token_env": "B2LUCA_TEST_UNSET_TOKEN"}})
    assert main(["run", str(config)]) == 2
    assert "B2LUCA_TEST_UNSET_TOKEN" in _one_error_line(capsys)


def test_usage_mistake(bucket_config, capsys):
    assert main(["run", str(bucket_config()), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in _one_error_line(capsys)


# --- exit code 1: failures while working, for real --------------------------------------------------
def test_data_missing(bucket_config, tmp_path, capsys):
    config = bucket_config(changes={"data.source": "files", "data.raw_directory": str(tmp_path / "nowhere")})
    assert main(["run", str(config)]) == 1
    assert "nowhere does not exist" in _one_error_line(capsys)


def test_rundb_failure(bucket_config, capsys):
    assert main(["rundb", str(bucket_config())]) == 1
    assert "synthetic run list not found" in _one_error_line(capsys)


def test_runner_failure_fails_the_calibration_and_the_run(simulated_bucket, tmp_path, capsys):
    # the basf2 runner with a b2caf-prompt-run that is not there: the shell's "command not found" (exit 127)
    config = simulated_bucket.config(tmp_path, changes={"runner.type": "basf2",
                                                        "runner.command": "no-such-b2caf-prompt-run"})
    assert main(["run", str(config), "--only", "PXDHotDeadPixels"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"PXDHotDeadPixels\s.*\sfailed", out), out
    issues = [p.read_text() for p in (tmp_path / "work" / "report").rglob("*PXDHotDeadPixels*.md")]
    assert any("exited with code 127" in text and "no-such-b2caf-prompt-run" in text for text in issues), issues
