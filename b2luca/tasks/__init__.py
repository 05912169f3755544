"""The luigi/b2luigi task graph of a bucket (DESIGN §1): setup, local, raw, cDST production, cdst, archive.

The graph never imports python-gitlab: tasks emit report events; a transport delivers them.
"""

from .archive import ArchiveLogs
from .calibration import CalibrationTask, GroupTask
from .cdst import CdstProduction
from .local import CopyLocalPayloads, LocalCalibrations
from .setup import MakeRunDB, PullSettings
from .stages import Bucket, RunCdstCalibrations, RunRawCalibrations

__all__ = ["ArchiveLogs", "Bucket", "CalibrationTask", "CdstProduction", "CopyLocalPayloads", "GroupTask",
           "LocalCalibrations", "MakeRunDB", "PullSettings", "RunCdstCalibrations", "RunRawCalibrations"]
