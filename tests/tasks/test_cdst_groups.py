"""cDST production tasks grouped by data volume (issue 15): names, outputs, and the per-run markers."""

from __future__ import annotations

from pathlib import Path

import luigi

from b2luca.tasks import ArchiveLogs, CdstProduction
from b2luca.dataset import group_runs
from b2luca.tasks.cdst import production_groups
from b2luca.tasks.context import context_for


def test_group_runs_closes_a_group_at_the_target():
    sizes = [(1, 10), (2, 3), (3, 3), (4, 4), (5, 12), (6, 1)]
    assert group_runs(sizes, 10) == [(1,), (2, 3, 4), (5,), (6,)]
    assert group_runs(sizes, 0) == [(r,) for r, _ in sizes]  # 0: one task per run
    assert group_runs(sizes, 1000) == [(1, 2, 3, 4, 5, 6)]
    assert group_runs([], 10) == []


def _fake_runs(cfg, sizes: dict[int, int]) -> None:
    for run, size in sizes.items():
        tag = cfg.data.raw_directory / f"e{cfg.bucket.experiment:04d}" / f"r{run:05d}" / "hadron_calib"
        tag.mkdir(parents=True, exist_ok=True)
        (tag / "raw_0.root").write_bytes(b"x" * size)


def test_small_runs_share_one_task_with_per_run_markers(bucket_config):
    path = bucket_config(changes={"data.production_task_mb": 0.002})  # 2000 bytes per task
    context_for.cache_clear()
    ctx = context_for(str(path))
    _fake_runs(ctx.cfg, {1: 1500, 2: 600, 3: 100, 4: 2500, 7: 10})
    assert production_groups(ctx) == [(1, 2), (3, 4), (7,)]
    archive = ArchiveLogs(config_path=str(path), group="cdst_production")
    tasks = archive.requires()
    assert [t.task_name for t in tasks] == ["CdstProduction:r00001-r00002", "CdstProduction:r00003-r00004",
                                           "CdstProduction:r00007"]
    first = tasks[0]
    assert isinstance(first, CdstProduction) and first.runs == (1, 2)
    markers = [Path(t.path) for t in luigi.task.flatten(first.output())]
    assert [m.name for m in markers] == ["r00001.json", "r00002.json"] and first.output_path() == markers[-1]
    markers[0].parent.mkdir(parents=True)
    markers[0].write_text("{}")
    assert not first.complete()  # every run of the group needs its marker
    markers[1].write_text("{}")
    assert first.complete()
