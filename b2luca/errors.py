"""Every exception b2luca raises, in one place, under one root.

Each class carries the exit code the ``b2luca`` command returns for it, so the command line needs one
``except B2lucaError``. Exit codes: 2 for a mistake of the user (configuration, calibration catalogue,
settings repository, report configuration, command-line usage), 1 for a failure while working (data,
RunDB, runner, cDST production, a failed calibration, the conditions database).

Each class also keeps the built-in base it had before the hierarchy existed (``ValueError`` or
``RuntimeError``), so code that catches the built-in keeps working.

The alignment library (:mod:`b2luca.alignment`) has its own root, :class:`b2luca.alignment.errors.AlignmentError`,
so that it stays importable without the rest of the package.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); a batch run cancelled its jobs first

__all__ = [
    "EXIT_OK", "EXIT_FAILURE", "EXIT_CONFIG", "EXIT_INTERRUPTED",
    "B2lucaError", "UserError", "WorkError",
    "UsageError", "ConfigError", "CatalogueError", "SettingsRepoError", "ReportConfigError",
    "DataError", "RawDataError", "RootReadError", "ProductionError", "RunDBError", "RunnerError",
    "CalibrationFailed", "DatabaseError", "GlobalTagError", "PayloadError", "EventError", "TransportError",
    "MLDependencyError",
    "ConditionsDBError", "ConditionsConfigError", "PublishRefused",
    "RunLockedError", "UnsafePathError", "UndeclaredDependencyError",
    "KernelLoadError",
]


class B2lucaError(Exception):
    """Root of every b2luca exception; ``exit_code`` is what ``b2luca`` exits with."""

    exit_code: int = EXIT_FAILURE


# --- exit code 2: the user's input is wrong -------------------------------------------------------
class UserError(B2lucaError):
    """A mistake in what the user gave b2luca (exit code 2)."""

    exit_code = EXIT_CONFIG


class UsageError(UserError, ValueError):
    """A command-line usage mistake (bad option value, unknown calibration name)."""


class ConfigError(UserError, ValueError):
    """A bucket configuration mistake, with the file and the key path in the message."""


class CatalogueError(UserError, ValueError):
    """A calibration catalogue problem; the message names the script(s) and, where known, the line."""


class SettingsRepoError(UserError, RuntimeError):
    """The settings repository cannot be used (clone failed, dirty, diverged, bad JSON ...)."""


class ReportConfigError(UserError, RuntimeError):
    """The report configuration is unusable (no token, project missing or no access ...)."""


# --- exit code 1: something failed while working --------------------------------------------------
class WorkError(B2lucaError):
    """A failure while running the bucket (exit code 1)."""

    exit_code = EXIT_FAILURE


class DataError(WorkError, RuntimeError):
    """Input data is missing or unusable."""


class RootReadError(WorkError, ValueError):
    """A ROOT file that cannot be read, or lacks a tree or branch (the message names the file)."""


class RawDataError(RootReadError):
    """A raw file is missing a tree/branch or is unreadable."""


class ProductionError(WorkError, RuntimeError):
    """The cDST production of a run cannot be done (missing/unreadable input, bad manifest)."""


class RunDBError(WorkError, RuntimeError):
    """The run database could not be read (the message never contains the API key)."""


class RunnerError(WorkError, RuntimeError):
    """A calibration or validation script could not be run or failed."""


class CalibrationFailed(WorkError, RuntimeError):
    """A calibration step failed; the message says which and why."""


class DatabaseError(WorkError, ValueError):
    """A conditions database directory or one of its lines is not usable."""


class GlobalTagError(DatabaseError):
    """A global-tag operation that its state does not allow."""


class PayloadError(WorkError, ValueError):
    """A payload file or payload content is not usable."""


class EventError(WorkError, ValueError):
    """A report event that cannot be recorded (unknown kind, missing task, not JSON)."""


class TransportError(WorkError):
    """A report delivery failed for a transient reason (network, 5xx, 429 ...); try again later."""

    def __init__(self, message: str, retry_after: float | None = None, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


# --- machine-learned calibrations (issue 16) ---------------------------------------------------------
class MLDependencyError(UserError, ImportError):
    """PyTorch (the ``ml`` extra) is not installed but an ML calibration needs it."""


# --- central conditions DB, global-tag lifecycle and sign-off (issue 12) ----------------------------
class ConditionsDBError(WorkError, RuntimeError):
    """A request to the central conditions database failed (the message never contains the token)."""


class ConditionsConfigError(UserError, ValueError):
    """The conditions backend cannot be used as configured (no token, bad rule ...)."""


class PublishRefused(WorkError, RuntimeError):
    """``b2luca publish`` cannot publish the prompt global tag (sign-offs missing, wrong state)."""


# --- issue 17 (part B): run lock, paths that leave their root, undeclared payload dependencies ------
class RunLockedError(WorkError, RuntimeError):
    """Another ``b2luca run`` of the same bucket holds the run lock (the message names pid, host, start)."""


class UnsafePathError(UserError, ValueError):
    """A name that becomes a path component would leave its root directory (``..``, ``/``, empty ...)."""


class UndeclaredDependencyError(WorkError, RuntimeError):
    """A calibration read a payload produced in this bucket by a calibration it does not depend on."""


# --- track fit's compiled kernels (issue 15) -----------------------------------------------------------
class KernelLoadError(WorkError, RuntimeError):
    """Compiled kernels (numba: the track fit's, CDCTimeZeros') could not be loaded (e.g. no writable cache
    directory); raised by :func:`b2luca.kernel_loading.import_kernels`."""
