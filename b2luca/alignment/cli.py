"""``b2luca align STEERING [--method M] [--out DIR]``: pede-compatible command line.

The lead wires :func:`add_arguments` and :func:`run` into the ``b2luca`` entry point.
Exit codes: 0 success, 1 failure while solving, 2 bad input (steering, Mille data, constraints).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from pathlib import Path

from ..atomic import write_text_atomic
from .mille import MilleError
from .problem import AlignmentProblem, solve
from .result import write_millepede_res
from .solve import SolverError
from .steering import PEDE_METHODS, SteeringError, read_steering

__all__ = ["add_arguments", "run", "main", "exit_now"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``align`` arguments to ``parser``."""
    parser.add_argument("steering", metavar="STEERING", help="pede steering file (Cfiles, constraints, method, ...)")
    parser.add_argument("--method", type=str.lower, choices=sorted(PEDE_METHODS), default=None,
                        help="override the steering's method: auto|sparse|dense|minres or a pede name "
                             "(inversion=auto, diagonalization/decomposition=dense, *MINRES=minres)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder for millepede.res and align_summary.json (default: the current "
                             "folder, as pede)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads for the data pass (default: the steering's 'threads', else one per core)")
    parser.add_argument("--no-errors", action="store_true", help="skip the parameter errors (saves time)")
    parser.add_argument("--quiet", action="store_true", help="no summary printout")


def _without_numba_extensions() -> None:
    """Keep numba from loading the installed packages' ``numba_extensions`` entry points in this process.

    numba runs every such entry point at its first compilation or cache load; awkward (which uproot brings)
    registers one that imports ~300 modules, ~0.2 s of a 3k-parameter fit's ~2 s (issue 15).  This process
    runs only b2luca's kernels, which use plain numpy arrays and no extension.  numba has no public switch
    for it: this sets the flag its ``init_all`` checks (numba 0.68, pinned in pyproject.toml;
    tests/alignment/test_lazy_imports.py fails if awkward is imported again)."""
    try:
        from numba.core import entrypoints
    except ImportError:  # the kernels report a broken numba where they need it
        return
    entrypoints._already_initialized = True


def _gc_after_imports(args: argparse.Namespace) -> None:
    """The console script (:func:`b2luca.cli.main`) starts ``b2luca align`` with the cyclic garbage collector
    off: scipy's and this package's imports create ~10^5 objects, and the collector's passes over them cost
    ~0.1 s of CPU (~10 % of the start-up, measured).  Here, before the fit, the objects so far are frozen
    (never scanned again) and the collector is on again, so the data pass collects as usual whatever its
    size (numba's import and the kernels' loading, in the pass, then scan only their own new objects)."""
    if getattr(args, "console", False) and not gc.isenabled():
        gc.freeze()
        gc.enable()


def run(args: argparse.Namespace) -> int:
    """Run the fit described by ``args``; returns the exit code."""
    _without_numba_extensions()
    _gc_after_imports(args)
    try:
        st = read_steering(args.steering)
        problem = AlignmentProblem.from_steering(st)
        if not problem.cfiles and not problem.ffiles:
            print(f"error: {args.steering}: no Cfiles/Fortranfiles listed", file=sys.stderr)
            return 2
        missing = [str(p) for p in problem.cfiles + problem.ffiles if not Path(p).exists()]
        if missing:
            print(f"error: {args.steering}: Mille file(s) not found: {', '.join(missing)}", file=sys.stderr)
            return 2
        problem.errors = not getattr(args, "no_errors", False)
        problem.phase_memory = True  # this process runs just the fit: its peak memory per phase is reported
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                print(f"error: --threads must be at least 1 (got {args.threads})", file=sys.stderr)
                return 2
            problem.threads = args.threads
        result = solve(problem, method=args.method)
    except (SteeringError, MilleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SolverError as exc:
        print(f"error: solving failed: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out is not None else Path.cwd()
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_millepede_res(out / "millepede.res", result)
        summary = {
            "method": result.method, "exact": result.exact, "chi2": result.chi2, "ndf": result.ndf,
            "chi2_ndf": result.chi2_ndf, "records": result.n_records, "records_used": result.n_used,
            "rejected": result.rejected, "parameters": int(result.labels.size),
            "fixed": {str(k): v for k, v in result.fixed_reason.items()}, "timings": result.timings,
            "iterations": result.iterations, "constraint_residual": result.constraint_residual,
            "warnings": result.warnings,
            "peak_memory_gb": {k: v / 1024**3 for k, v in result.info.get("peak_rss_bytes", {}).items()},
        }
        write_text_atomic(out / "align_summary.json", json.dumps(summary, indent=1, default=float))
    except OSError as exc:
        print(f"error: cannot write results to {out}: {exc}", file=sys.stderr)
        return 1
    if not getattr(args, "quiet", False):
        print(result.summary())
        print(f"written {out / 'millepede.res'}")
    return 0


def exit_now(rc: int) -> None:
    """End this process with exit status ``rc`` at once, after flushing the standard streams and the logging
    handlers: no interpreter teardown (the clean-up of the modules and objects of numba, LLVM, scipy and the
    fit: 0.15-0.3 s of CPU after a 3k-parameter fit, measured, ~5-10 % of the whole command).
    Only for a process that runs just the fit (the ``b2luca align`` console script, ``python -m``): its
    outputs are written and closed (atomically) before."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader went away (``| head``): nothing more can be said there
            pass
        except (OSError, ValueError):  # e.g. a full disk under ``> log``: the output is lost, so no success
            rc = rc or 120  # what Python's own exit reports when flushing the standard streams fails
    logging.shutdown()
    os._exit(rc)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m b2luca.alignment.cli STEERING``)."""
    parser = argparse.ArgumentParser(prog="b2luca align", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    exit_now(main())
