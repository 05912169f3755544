"""The stages and the top task: RunRawCalibrations, RunCdstCalibrations, Bucket."""

from __future__ import annotations

from .archive import ArchiveLogs
from .base import BucketWrapperTask
from .context import STAGE_CDST, STAGE_LOCAL, STAGE_PRODUCTION, STAGE_RAW, group_name


def _stage_archives(task: BucketWrapperTask, stage: str) -> list[ArchiveLogs]:
    groups = task.ctx.plan.stage(stage).groups
    return [ArchiveLogs(config_path=task.config_path, group=group_name(stage, level)) for level in range(len(groups))]


class RunRawCalibrations(BucketWrapperTask):
    """Every raw-stage group, each archived when it finishes."""

    def requires(self):
        return _stage_archives(self, STAGE_RAW)


class RunCdstCalibrations(BucketWrapperTask):
    """cDST production (archived) and every cdst-stage group."""

    def requires(self):
        return [ArchiveLogs(config_path=self.config_path, group=STAGE_PRODUCTION)] + _stage_archives(self, STAGE_CDST)


class Bucket(BucketWrapperTask):
    """The whole prompt calibration loop of one bucket."""

    def requires(self):
        return [ArchiveLogs(config_path=self.config_path, group=STAGE_LOCAL),
                RunRawCalibrations(config_path=self.config_path),
                RunCdstCalibrations(config_path=self.config_path)]
