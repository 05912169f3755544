"""``b2luca check`` names the scripts it skips (no settings) instead of ignoring them silently."""

from __future__ import annotations

from b2luca.cli import main

from bucket_helpers import copy_calibrations, make_bucket


def test_check_lists_skipped_scripts(tmp_path, capsys):
    calibrations = copy_calibrations(tmp_path)
    (calibrations / "print_steerings.py").write_text('"""Prints steering files; no settings."""\nimport sys\n')
    config = make_bucket(tmp_path, calibrations=calibrations)
    assert main(["check", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"notice: {calibrations / 'print_steerings.py'}: skipped, declares no `settings = CalibrationSettings(...)`" \
        in out
    assert "_common.py" not in out  # private helpers are not scripts
