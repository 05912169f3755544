"""A bucket spanning the largest allowed run range is planned from the run directories that exist."""

from __future__ import annotations

import sys
from pathlib import Path

from b2luca.config import load_config
from b2luca import dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: bucket_helpers
from bucket_helpers import make_bucket  # noqa: E402


def test_production_runs_lists_existing_run_directories_only(tmp_path, monkeypatch):
    config = make_bucket(tmp_path, changes={"bucket.first_run": 0, "bucket.last_run": 999999})
    cfg = load_config(config)
    for run, tag in ((3, "hadron_calib"), (7, "cosmic_calib"), (123456, "random_calib")):
        folder = tmp_path / "data" / "e0026" / f"r{run:05d}" / tag
        folder.mkdir(parents=True)
        (folder / "raw_0.root").write_bytes(b"")
    (tmp_path / "data" / "e0026" / "r00009").mkdir()  # no ROOT file: not a production run
    calls = []
    real = dataset.run_root
    monkeypatch.setattr(dataset, "run_root", lambda root, exprun: calls.append(exprun) or real(root, exprun))
    assert dataset.production_runs(cfg) == [3, 7, 123456]
    assert len(calls) < 10  # today's main stats every one of the million run numbers
