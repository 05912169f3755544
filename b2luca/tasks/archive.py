"""Archiving: when a group finishes, its logs and small outputs go to long-term storage (the work of
:class:`~b2luca.tasks.graph.ArchiveLogs`).

Destination: ``<archive>/<bucket>/<YYYY-MM-DD>/<group>/<task>/...``.  Files larger than
``archive.max_file_size_mb`` are never copied (the ROOT data files of the dataset are never in the
archived folders).  The copy is made in a temporary directory and renamed into place, so an archive
that exists is complete.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Iterable

from ..atomic import write_json_atomic
from ..enums import Stage
from ..paths import check_component, check_name, under
from .context import BucketContext, parse_group


def _small_files(directory: Path, limit_bytes: float) -> Iterable[tuple[Path, Path]]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.stat().st_size <= limit_bytes:
            yield path, path.relative_to(directory)


def group_sources(ctx: BucketContext, group: str) -> list[tuple[str, Path]]:
    """(label, folder) of everything a group's tasks wrote: the folders its archive copies."""
    stage, level = parse_group(group)
    if stage == Stage.LOCAL:
        return [("local", ctx.work_dir / "local")]
    if stage == Stage.PRODUCTION:
        return [("cdst_production", ctx.work_dir / "cdst_production")]
    names = ctx.plan.stage(stage).groups[level or 0]
    return [(name, ctx.calibration_dir(name)) for name in names]


def archive_group(ctx: BucketContext, group: str, output: Path) -> None:
    """Copy one finished group's small files to the archive; write the marker ``output`` last."""
    cfg = ctx.cfg
    day = _dt.date.today().isoformat()
    destination = under(cfg.archive.directory, check_name(cfg.name, "bucket.name"), day,
                        check_name(group, "group"), what="archive destination")
    limit = cfg.archive.max_file_size_mb * 1024 * 1024
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{group}.", dir=destination.parent))
    copied, skipped = 0, 0
    try:
        for label, source in group_sources(ctx, group):
            check_component(label, "archive label")
            if not source.is_dir():
                continue
            for path, relative in _small_files(source, limit):
                target = staging / label / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied += 1
            skipped += sum(1 for p in source.rglob("*") if p.is_file() and p.stat().st_size > limit)
        report = ctx.work_dir / "report"
        if report.is_dir():  # the reports as they stand when the group finishes
            for path, relative in _small_files(report, limit):
                if path.suffix == ".md":
                    target = staging / "report" / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
        if destination.exists():  # an earlier archive of the same group on the same day
            shutil.rmtree(destination)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    ctx.emit("archived", group, group=group, location=str(destination))
    write_json_atomic(output, {"group": group, "location": str(destination), "files": copied,
                               "skipped_large": skipped})
