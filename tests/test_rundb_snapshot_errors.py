"""RunDB snapshots with bad rows: one error naming file, line and column for every problem."""

import re

import pytest

from b2luca.rundb import RunDBError, read_snapshot, write_snapshot

HEADER = "experiment,run,run_type,beam_energy,detectors.magnet\n"


def _snap(tmp_path, rows: str):
    path = tmp_path / "snap.csv"
    path.write_text(HEADER + rows)
    return path


def _message(path) -> str:
    with pytest.raises(RunDBError) as info:
        read_snapshot(path)
    return str(info.value)


def test_non_integer_run_names_file_line_and_column(tmp_path):
    path = _snap(tmp_path, "26,1,physics,4S,On\n26,abc,physics,4S,On\n")
    assert _message(path) == (f"{path}: line 3, column 2 (run): expected a non-negative integer, got 'abc'")


def test_all_bad_rows_reported_at_once(tmp_path):
    path = _snap(tmp_path, "x,1,physics,4S,On\n26,-2,physics,4S,On\n26,,physics,4S,On\n26,4,physics,4S,On\n")
    lines = _message(path).splitlines()
    assert [re.search(r"line (\d+), column (\d+)", line).groups() for line in lines] == [
        ("2", "1"), ("3", "2"), ("4", "2")]


def test_header_only_snapshot_said_so(tmp_path):
    path = _snap(tmp_path, "")
    assert "has a header but no run rows" in _message(path)


def test_repeated_and_conflicting_rows_rejected(tmp_path):
    path = _snap(tmp_path, "26,1,physics,4S,On\n26,2,physics,4S,On\n26,1,physics,4S,On\n"
                           "26,2,cosmic,4S,Off\n26,3,physics,4S,On\n")
    lines = _message(path).splitlines()
    assert lines == [f"{path}: lines 2, 4: repeated rows for experiment 26 run 1",
                     f"{path}: lines 3, 5: conflicting rows for experiment 26 run 2"]


def test_good_snapshot_round_trip_keeps_integer_columns(tmp_path):
    records = [{"experiment": 26, "run": r, "run_type": "physics", "beam_energy": "4S"} for r in (3, 1, 2)]
    write_snapshot(records, tmp_path / "ok.csv")
    frame = read_snapshot(tmp_path / "ok.csv")
    assert frame["run"].tolist() == [1, 2, 3] and str(frame["run"].dtype) == "int64"
    assert str(frame["experiment"].dtype) == "int64"


def test_binary_garbage_is_one_line(tmp_path):
    path = tmp_path / "snap.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\x00\n\x81\x82,\x00")
    message = _message(path)
    assert str(path) in message and "\n" not in message
