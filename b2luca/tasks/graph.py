"""The task graph of a bucket (DESIGN §1): the luigi classes, each only ``requires``/``output``.

The work of each task is a plain function in its own module (:mod:`.setup`, :mod:`.local`,
:mod:`.calibration`, :mod:`.cdst`, :mod:`.archive`); those modules never import this one, so the
class graph (which is cyclic: ``ArchiveLogs`` needs groups, cDST calibrations need the production,
the production needs raw calibrations) lives in this one module and the imports stay acyclic.
"""

from __future__ import annotations

from pathlib import Path

import luigi

from ..enums import Stage
from ..paths import check_name, under
from ..payload_deps import production_requirements
from . import archive, calibration, cdst, local, setup
from .base import BucketTask, BucketWrapperTask
from .context import archive_task_name, group_name, local_task_name, parse_group


# --- before any calibration -----------------------------------------------------------------------
class PullSettings(BucketTask):
    """Clone or fast-forward the bucket's settings repository; record its commit and expert overrides."""

    def output_path(self) -> Path:
        return self.ctx.settings_file

    def run(self) -> None:
        setup.pull_settings(self.ctx)


class MakeRunDB(BucketTask):
    """Query the run database for the bucket's runs and write the CSV snapshot."""

    def output_path(self) -> Path:
        return self.ctx.cfg.rundb.snapshot

    def run(self) -> None:
        setup.make_rundb(self.ctx)


# --- local calibrations ---------------------------------------------------------------------------
class CopyLocalPayloads(BucketTask):
    """Copy the payloads of one subsystem from one source global tag, IoV set to the bucket."""

    subsystem = luigi.Parameter()
    source_tag = luigi.Parameter()

    @property
    def task_name(self) -> str:
        return local_task_name(self.subsystem, self.source_tag)

    def output_path(self) -> Path:
        name = f"{check_name(self.subsystem, 'local_calibrations subsystem')}_" \
               f"{check_name(self.source_tag, 'local_calibrations global tag')}.json"
        return under(self.ctx.work_dir / "local", name, what="local calibration output")

    def run(self) -> None:
        local.copy_local_payloads(self.ctx, self.subsystem, self.source_tag, self.output_path())


class LocalCalibrations(BucketWrapperTask):
    """All local calibrations of the bucket (one copy task per subsystem and source global tag)."""

    def requires(self) -> list[CopyLocalPayloads]:
        return [CopyLocalPayloads.req(self, subsystem=sub, source_tag=tag)
                for sub, tags in self.ctx.cfg.local_calibrations.items() for tag in tags]


# --- calibrations ---------------------------------------------------------------------------------
class CalibrationTask(BucketTask):
    """One calibration of the catalogue, run through the configured runner."""

    name = luigi.Parameter(description="calibration name (CalibrationSettings.name)")

    @property
    def task_name(self) -> str:
        return str(self.name)

    def output_path(self) -> Path:
        return self.ctx.result_path(self.name)

    def requires(self) -> list[luigi.Task]:
        ctx = self.ctx
        info = ctx.catalogue[self.name]
        required: list[luigi.Task] = [PullSettings.req(self), MakeRunDB.req(self), LocalCalibrations.req(self)]
        # Only what it depends on: a payload of any other calibration of the bucket is an undeclared read
        # (b2luca.payload_deps), so a calibration need not wait for the unrelated ones of the groups before.
        required += [CalibrationTask.req(self, name=dep) for dep in info.depends_on]
        if info.stage == Stage.CDST:
            required += [CdstProduction.req(self, run_number=runs[0]) for runs in cdst.production_groups(ctx)]
        return required

    def prepare_in_driver(self) -> None:
        calibration.prepare(self.ctx)

    def run(self) -> None:
        calibration.run_calibration(self.ctx, self.name)


class GroupTask(BucketWrapperTask):
    """The calibrations of one plan group (no calibration depends on another in the group)."""

    stage = luigi.Parameter()
    level = luigi.IntParameter()

    def requires(self) -> list[CalibrationTask]:
        names = self.ctx.plan.stage(self.stage).groups[self.level]
        return [CalibrationTask.req(self, name=name) for name in names]


# --- cDST production --------------------------------------------------------------------------------
class CdstProduction(BucketTask):
    """Reconstruct a group of consecutive runs (every data tag) into cDST files, after the raw calibrations
    whose payloads reconstruction reads (:func:`b2luca.payload_deps.production_requirements`); the other raw
    calibrations run beside it, and their failure does not stop it.

    The group starts at ``run_number``; its runs come from :func:`~b2luca.tasks.cdst.production_groups`
    (sized by data volume, ``data.production_task_mb``; 0 gives one task per run).  The outputs are the
    per-run markers; ``complete()`` is luigi's default: every marker exists.  The markers are not
    compared with the constants; after ``--rerun`` of a raw calibration the driver deletes them (see
    :func:`b2luca.tasks.driver.invalidate`).
    """

    run_number = luigi.IntParameter(description="the first run of the group")

    @property
    def runs(self) -> tuple[int, ...]:
        """The runs this task reconstructs."""
        return cdst.production_group(self.ctx, int(self.run_number))

    @property
    def task_name(self) -> str:
        return cdst.group_task_name(self.runs)

    def marker(self, run: int) -> Path:
        """The marker of one run, written when the run's cDST files and manifest are."""
        return self.ctx.work_dir / "cdst_production" / f"r{int(run):05d}.json"

    def output_path(self) -> Path:
        return self.marker(self.runs[-1])  # written last

    def output(self) -> list[luigi.LocalTarget]:  # type: ignore[override]
        return [luigi.LocalTarget(str(self.marker(run))) for run in self.runs]

    def requires(self) -> list[luigi.Task]:
        ctx = self.ctx
        required: list[luigi.Task] = [PullSettings.req(self), MakeRunDB.req(self), LocalCalibrations.req(self)]
        return required + [CalibrationTask.req(self, name=name)
                           for name in production_requirements(ctx.catalogue, ctx.plan)]

    def prepare_in_driver(self) -> None:
        cdst.prepare(self.ctx, self.runs)

    def run(self) -> None:
        runs = self.runs
        cdst.produce(self.ctx, runs, [self.marker(run) for run in runs])


# --- archives and stages ----------------------------------------------------------------------------
class ArchiveLogs(BucketTask):
    """Archive one finished group: ``local``, ``raw-<n>``, ``cdst_production`` or ``cdst-<n>``."""

    group = luigi.Parameter()

    @property
    def task_name(self) -> str:
        return archive_task_name(self.group)

    def output_path(self) -> Path:
        return self.ctx.work_dir / "archive" / f"{self.group}.json"

    def requires(self) -> luigi.Task | list[luigi.Task]:
        stage, level = parse_group(self.group)
        if stage == Stage.LOCAL:
            return LocalCalibrations.req(self)
        if stage == Stage.PRODUCTION:
            return [CdstProduction.req(self, run_number=runs[0]) for runs in cdst.production_groups(self.ctx)]
        return GroupTask.req(self, stage=stage, level=level)

    def run(self) -> None:
        archive.archive_group(self.ctx, self.group, self.output_path())


def _stage_archives(task: BucketWrapperTask, stage: Stage) -> list[ArchiveLogs]:
    levels = range(len(task.ctx.plan.stage(stage).groups))
    return [ArchiveLogs.req(task, group=group_name(stage, level)) for level in levels]


class RunRawCalibrations(BucketWrapperTask):
    """Every raw-stage group, each archived when it finishes."""

    def requires(self) -> list[ArchiveLogs]:
        return _stage_archives(self, Stage.RAW)


class RunCdstCalibrations(BucketWrapperTask):
    """cDST production (archived) and every cdst-stage group."""

    def requires(self) -> list[ArchiveLogs]:
        return [ArchiveLogs.req(self, group=Stage.PRODUCTION)] + _stage_archives(self, Stage.CDST)


class Bucket(BucketWrapperTask):
    """The whole prompt calibration loop of one bucket."""

    def requires(self) -> list[luigi.Task]:
        return [ArchiveLogs.req(self, group=Stage.LOCAL), RunRawCalibrations.req(self), RunCdstCalibrations.req(self)]


__all__ = ["ArchiveLogs", "Bucket", "CalibrationTask", "CdstProduction", "CopyLocalPayloads", "GroupTask",
           "LocalCalibrations", "MakeRunDB", "PullSettings", "RunCdstCalibrations", "RunRawCalibrations"]
