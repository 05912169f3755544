"""CdstProduction: reconstruct one run's raw data with the constants produced so far, write cDST files.

The task is complete when its marker exists.  After a raw calibration is re-run (``--rerun``), the
markers are forgotten and production runs again, recomputing only the parts of the cDST that depend
on the changed constants (see :mod:`b2luca.production`).
"""

from __future__ import annotations

from pathlib import Path

import luigi

from ..config import BucketConfig
from ..dataset import run_root
from ..iov import ExpRun
from .base import BucketTask
from ..atomic import write_json_atomic
from .context import STAGE_PRODUCTION


def production_runs(cfg: BucketConfig) -> list[int]:
    """Runs of the bucket that have raw data on disk (every run is reconstructed, whatever its quality)."""
    runs = []
    # the run directories that exist (not every number of the range: a range may hold a million runs)
    exp_dir = run_root(cfg.data.raw_directory, ExpRun(cfg.bucket.experiment, 0)).parent
    names = sorted(p.name for p in exp_dir.glob("r*")) if exp_dir.is_dir() else []
    for name in names:
        if not (name[1:].isdigit() and cfg.bucket.first_run <= int(name[1:]) <= cfg.bucket.last_run):
            continue
        directory = run_root(cfg.data.raw_directory, ExpRun(cfg.bucket.experiment, int(name[1:])))
        if directory.is_dir() and any(directory.glob("*/*.root")):
            runs.append(int(name[1:]))
    return sorted(runs)


class CdstProduction(BucketTask):
    """Reconstruct one run (every data tag) into cDST files."""

    run_number = luigi.IntParameter()

    @property
    def exprun(self) -> ExpRun:
        return ExpRun(self.ctx.cfg.bucket.experiment, int(self.run_number))

    @property
    def task_name(self) -> str:
        return f"CdstProduction:r{int(self.run_number):05d}"

    def output_path(self) -> Path:
        return self.ctx.work_dir / "cdst_production" / f"r{int(self.run_number):05d}.json"

    def requires(self):
        from .stages import RunRawCalibrations

        return RunRawCalibrations(config_path=self.config_path)

    # complete() is luigi's default: the run's marker exists.  The marker is judged against the constants
    # the production was scheduled with; the cdst stage later stores payloads (e.g. ECLCrystalEnergy) that
    # the manifest also tracks, and those must not make a finished production look stale.  New raw-stage
    # constants reach the cDSTs through ``--rerun`` (which forgets the markers); produce_run then
    # recomputes only the branch groups whose constants changed (production.manifest_is_current).

    def _cdst_run_dir(self) -> Path:
        return run_root(self.ctx.cfg.data.cdst_directory, self.exprun)

    def run(self) -> None:
        from ..production import produce_run

        ctx, cfg = self.ctx, self.ctx.cfg
        start = self.now()
        ctx.emit("task_started", self.task_name, stage=STAGE_PRODUCTION, group=STAGE_PRODUCTION)
        raw_dir = run_root(cfg.data.raw_directory, self.exprun)
        try:
            summary = produce_run(raw_dir, self._cdst_run_dir(), ctx.chain(), self.exprun)
        except Exception as exc:
            ctx.emit("task_failed", self.task_name, reason=str(exc), log_tail="", log_path="",
                     duration=self.now() - start, validation_failed=False)
            raise
        ctx.emit("task_succeeded", self.task_name, duration=self.now() - start)
        write_json_atomic(self.output_path(), {"run": int(self.run_number), "start": start,
                                               "duration": self.now() - start, **summary})
