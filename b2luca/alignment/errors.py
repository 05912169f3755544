"""The alignment library's exceptions, under their own root so the library imports without the rest of b2luca.

``exit_code`` follows the ``b2luca`` convention: 2 for bad input (steering, constraints, Mille data), 1 for a
failure while solving.
"""

from __future__ import annotations

__all__ = ["AlignmentError", "MilleError", "SteeringError", "SolverError", "TimedepConfigError"]


class AlignmentError(Exception):
    """Root of the alignment library's exceptions."""

    exit_code: int = 1


class MilleError(AlignmentError, ValueError):
    """Corrupt, truncated or inconsistent Mille data (the message names file and record)."""

    exit_code = 2


class SteeringError(AlignmentError, ValueError):
    """Bad steering / constraint / parameter text (message names file and line)."""

    exit_code = 2


class SolverError(AlignmentError, RuntimeError):
    """The system cannot be solved (singular with the given constraints, bad method, ...)."""

    exit_code = 1


class TimedepConfigError(AlignmentError, ValueError):
    """Bad time-dependence configuration (``timedep`` / ``payload_boundaries``; the message names each key)."""

    exit_code = 2
