"""ArchiveLogs: when a group finishes, its logs and small outputs go to long-term storage.

Destination: ``<archive>/<bucket>/<YYYY-MM-DD>/<group>/<task>/...``.  Files larger than
``archive.max_file_size_mb`` and ROOT data files of the dataset are never copied.  The copy is made
in a temporary directory and renamed into place, so an archive that exists is complete.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import luigi

from .base import BucketTask
from ..atomic import write_json_atomic
from ..paths import check_component, check_name, under
from .context import STAGE_LOCAL, STAGE_PRODUCTION


def _small_files(directory: Path, limit_bytes: float) -> Iterable[tuple[Path, Path]]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.stat().st_size <= limit_bytes:
            yield path, path.relative_to(directory)


class ArchiveLogs(BucketTask):
    """Archive one finished group: ``local``, ``raw-<n>``, ``cdst_production`` or ``cdst-<n>``."""

    group = luigi.Parameter()

    def output_path(self) -> Path:
        return self.ctx.work_dir / "archive" / f"{self.group}.json"

    def _parts(self) -> tuple[str, int | None]:
        if self.group in (STAGE_LOCAL, STAGE_PRODUCTION):
            return self.group, None
        stage, _, level = self.group.rpartition("-")
        return stage, int(level)

    def requires(self):
        from .calibration import GroupTask
        from .cdst import CdstProduction, production_runs
        from .local import LocalCalibrations

        stage, level = self._parts()
        if stage == STAGE_LOCAL:
            return LocalCalibrations(config_path=self.config_path)
        if stage == STAGE_PRODUCTION:
            return [CdstProduction(config_path=self.config_path, run_number=r) for r in production_runs(self.ctx.cfg)]
        return GroupTask(config_path=self.config_path, stage=stage, level=level)

    def _sources(self) -> list[tuple[str, Path]]:
        ctx = self.ctx
        stage, level = self._parts()
        if stage == STAGE_LOCAL:
            return [("local", ctx.work_dir / "local")]
        if stage == STAGE_PRODUCTION:
            return [("cdst_production", ctx.work_dir / "cdst_production")]
        names = ctx.plan.stage(stage).groups[level]
        return [(name, ctx.calibration_dir(name)) for name in names]

    def run(self) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        day = _dt.date.today().isoformat()
        destination = under(cfg.archive.directory, check_name(cfg.name, "bucket.name"), day,
                            check_name(self.group, "group"), what="archive destination")
        limit = cfg.archive.max_file_size_mb * 1024 * 1024
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.group}.", dir=destination.parent))
        copied, skipped = 0, 0
        try:
            for label, source in self._sources():
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
        ctx.emit("archived", self.group, group=self.group, location=str(destination))
        write_json_atomic(self.output_path(), {"group": self.group, "location": str(destination),
                                               "files": copied, "skipped_large": skipped})
