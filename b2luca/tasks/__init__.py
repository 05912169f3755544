"""The luigi/b2luigi task graph of a bucket (DESIGN §1): setup, local, raw, cDST production, cdst, archive.

:mod:`.graph` declares the tasks; each task's work is a plain function in :mod:`.setup`, :mod:`.local`,
:mod:`.calibration`, :mod:`.cdst` or :mod:`.archive`; :mod:`.driver` runs the graph.  The graph never
imports python-gitlab: tasks emit report events; a transport delivers them.
"""

from .graph import (ArchiveLogs, Bucket, CalibrationTask, CdstProduction, CopyLocalPayloads, GroupTask,
                    LocalCalibrations, MakeRunDB, PullSettings, RunCdstCalibrations, RunRawCalibrations)

__all__ = ["ArchiveLogs", "Bucket", "CalibrationTask", "CdstProduction", "CopyLocalPayloads", "GroupTask",
           "LocalCalibrations", "MakeRunDB", "PullSettings", "RunCdstCalibrations", "RunRawCalibrations"]
