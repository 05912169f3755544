"""The named choices of b2luca, one enum each: stages, task states, and the bucket YAML's choice keys.

Every enum is a :class:`enum.StrEnum`: its members *are* strings, equal to their value, so what is
written to disk (``result.json``, ``status.json``, report events, issue labels) and what a YAML file
holds stays the plain word (``"raw"``, ``"validation-failed"``, ``"gitlab"``).  This module imports
nothing from b2luca, so any layer may use it.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A stage of the bucket's loop (DESIGN §1), in the order they run."""

    LOCAL = "local"
    RAW = "raw"
    PRODUCTION = "cdst_production"
    CDST = "cdst"

    @property
    def has_levels(self) -> bool:
        """Whether the stage is made of numbered groups (``raw-0``, ``cdst-1``) rather than one group."""
        return self in (Stage.RAW, Stage.CDST)


class TaskStatus(StrEnum):
    """The state of one task, as ``result.json``, the report, ``b2luca status`` and the final table say it.

    ``SUCCESS``/``VALIDATION_FAILED``/``VETOED`` are the three outcomes a finished calibration records; the report
    adds ``PENDING``/``RUNNING``/``FAILED``; the driver's table adds what it saw of a luigi run
    (``DONE_BEFORE``, ``NOT_RUN`` ...) and ``--dry-run`` says ``WOULD_RUN`` or ``DONE``.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    VALIDATION_FAILED = "validation-failed"
    VETOED = "vetoed"  # the update/veto rule kept the payloads out of the prompt global tag
    # what the driver saw of one luigi run
    DONE_BEFORE = "done before"
    DONE_BEFORE_VALIDATION_FAILED = "done before (validation-failed)"
    DONE_BEFORE_VETOED = "done before (vetoed)"
    NOT_RUN = "not run"
    UPSTREAM_FAILED = "not run (upstream failed)"
    SCHEDULING_FAILED = "not run (scheduling failed)"
    INTERRUPTED = "interrupted"
    DISABLED = "disabled"
    # --dry-run
    WOULD_RUN = "would run"
    DONE = "done"


#: The states a report (and a GitLab ``status::`` label) can show.
REPORT_STATES: tuple[TaskStatus, ...] = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS, TaskStatus.FAILED,
                                        TaskStatus.VALIDATION_FAILED, TaskStatus.VETOED)


# --- choices of the bucket YAML (the schema's enums are checked against these by a test) -----------
class DataSource(StrEnum):
    """``data.source``: simulate the toy detector, or read files that exist."""

    SYNTHETIC = "synthetic"
    FILES = "files"


class RunDBSource(StrEnum):
    """``rundb.source``: the simulated run list, or the Belle II RunDB REST API."""

    SYNTHETIC = "synthetic"
    REST = "rest"


class Transport(StrEnum):
    """``report.transport``: local Markdown only, or also GitLab issues."""

    LOCAL = "local"
    GITLAB = "gitlab"


class RunnerType(StrEnum):
    """``runner.type``: how calibration scripts run."""

    NATIVE = "native"
    BASF2 = "basf2"


class ConditionsBackend(StrEnum):
    """``conditions.backend``: local database folders only, or also the central conditions-DB service
    (payloads uploaded after validation; local calibrations copied with ``b2conditionsdb iovs copy``)."""

    LOCAL = "local"
    CENTRAL = "central"


class OnValidationFailure(StrEnum):
    """``calibrations.on_validation_failure``: whether dependents of a failed validation still run."""

    STOP = "stop"
    CONTINUE = "continue"


class PXDBackground(StrEnum):
    """``simulation.pxd_background``: PXD beam background overlaid on the simulated tracking samples."""

    NONE = "none"
    SIMULATED = "simulated"  # the toy full simulation (b2luca.sim.pxd_background)
    GAN = "gan"  # pixels from a PXDBackgroundGAN payload (simulation.pxd_background_payload)


class BatchSystem(StrEnum):
    """``batch.system``: run every task in the driver, or calibrations and cDST productions as batch jobs."""

    LOCAL = "local"
    SLURM = "slurm"
    LSF = "lsf"
    HTCONDOR = "htcondor"

    @property
    def is_cluster(self) -> bool:
        """Whether tasks are submitted to a batch system (every choice but ``local``)."""
        return self is not BatchSystem.LOCAL


__all__ = ["BatchSystem", "ConditionsBackend", "DataSource", "OnValidationFailure", "REPORT_STATES", "RunDBSource",
           "RunnerType", "Stage", "TaskStatus", "Transport"]
