"""The RunDB snapshot is parsed once per process while the file stays the same (issue 15: fixed cost per task)."""

import pytest

from b2luca.rundb import RunDBError, write_snapshot
from b2luca.tasks import calibration


def test_snapshot_parsed_once_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "snapshot.csv"
    write_snapshot([{"experiment": 26, "run": 1, "data_tags": "mumu_calib"}], path)
    calls = []
    original = calibration.read_snapshot
    monkeypatch.setattr(calibration, "read_snapshot", lambda p: calls.append(p) or original(p))
    calibration._snapshot.cache_clear()
    first = calibration.snapshot(path)
    first.loc[0, "run"] = 99  # a caller changing its frame does not change the next caller's
    assert list(calibration.snapshot(path)["run"]) == [1] and len(calls) == 1
    write_snapshot([{"experiment": 26, "run": 2, "data_tags": "mumu_calib"}], path)  # rewritten: read again
    assert list(calibration.snapshot(path)["run"]) == [2] and len(calls) == 2
    path.write_text("experiment,run\n")  # a bad snapshot still raises its error, every time
    for _ in range(2):
        with pytest.raises(RunDBError, match="header but no run rows"):
            calibration.snapshot(path)
    path.unlink()
    with pytest.raises(RunDBError, match="not found"):
        calibration.snapshot(path)
