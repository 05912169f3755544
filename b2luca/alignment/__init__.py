"""Millepede-style track-based alignment: Mille I/O, vectorised local elimination, exact sparse solve.

Public API::

    from b2luca.alignment import solve_steering, AlignmentProblem, solve, read_mille, write_mille
    res = solve_steering("steer.txt", method="sparse")   # AlignmentResult
    write_millepede_res("millepede.res", res); print(res.summary())

This package depends on numpy, scipy and threadpoolctl only (no luigi / task graph).
"""

from .assemble import Assembler, GlobalSystem
from .mille import MilleError, MilleRecords, concat_records, iter_mille, read_mille, records_from_dense, write_mille
from .problem import AlignmentProblem, solve, solve_steering
from .result import AlignmentResult, read_millepede_res, write_millepede_res
from .solve import LinearConstraints, SolverError, solve_system
from .sparse_chol import SupernodalCholesky
from .steering import (EXACT_METHODS, PEDE_METHODS, Constraint, FitOptions, ParameterSpec, Steering,
                       SteeringError, read_steering, read_text_file)

__all__ = [
    "AlignmentProblem", "AlignmentResult", "Assembler", "Constraint", "EXACT_METHODS", "FitOptions", "GlobalSystem",
    "LinearConstraints", "MilleError", "MilleRecords", "PEDE_METHODS", "ParameterSpec", "SolverError", "Steering",
    "SteeringError", "SupernodalCholesky", "concat_records", "iter_mille", "read_mille", "read_millepede_res",
    "read_steering", "read_text_file", "records_from_dense", "solve", "solve_steering", "solve_system",
    "write_mille", "write_millepede_res",
]
