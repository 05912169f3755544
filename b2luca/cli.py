"""The ``b2luca`` command: one entry point with subcommands.

Exit codes: 0 ok, 1 a task/calibration failed or data is missing, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from . import __version__
from .errors import (EXIT_CONFIG, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, B2lucaError, ConfigError, ReportConfigError,
                     TransportError)
from .errors import UsageError

if TYPE_CHECKING:
    from .catalogue import Catalogue, Plan
    from .config import BucketConfig


def _load(path: str) -> BucketConfig:
    from .config import load_config  # here, not at the top: `b2luca align` needs no bucket configuration

    return load_config(path)


def _load_plan(cfg: BucketConfig) -> tuple[Catalogue, Plan]:
    """The bucket's catalogue (as its tasks see it) and plan; expert_config must name known calibrations."""
    from .tasks.context import BucketContext

    ctx = BucketContext(cfg)
    catalogue = ctx.catalogue
    unknown = sorted(set(cfg.calibrations.expert_config) - set(catalogue.calibrations))
    if unknown:
        raise ConfigError(f"{cfg.path}: calibrations.expert_config.{unknown[0]}: no calibration of that name in "
                          f"{cfg.calibrations.directory} (known: {', '.join(sorted(catalogue.calibrations))})")
    unknown = sorted(set(cfg.calibrations.upload) - set(catalogue.calibrations) - {"default"})
    if unknown:
        raise ConfigError(f"{cfg.path}: calibrations.upload.{unknown[0]}: no calibration of that name in "
                          f"{cfg.calibrations.directory} (use 'default' or one of: "
                          f"{', '.join(sorted(catalogue.calibrations))})")
    return catalogue, ctx.plan


# --- subcommands ----------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    """Validate the bucket config and the calibration catalogue; print the plan."""
    cfg = _load(args.config)
    catalogue, plan = _load_plan(cfg)
    b = cfg.bucket
    print(f"bucket {b.name}: experiment {b.experiment}, runs {b.first_run}-{b.last_run} "
          f"(requested IoV {cfg.requested_iov}; prompt payloads valid {cfg.prompt_iov})")
    print(f"work dir {cfg.work_dir}; runner {cfg.runner.type}; report {cfg.report.transport}; "
          f"batch {cfg.batch.system} x{cfg.batch.workers}")
    print(f"database chain: {cfg.conditions.prompt_global_tag} (prompt) -> {' -> '.join(cfg.conditions.database_chain)}")
    print()
    print("stage local: copy into the prompt global tag")
    for subsystem, tags in cfg.local_calibrations.items():
        for tag, names in tags.items():
            print(f"  {subsystem}: {tag} -> {', '.join(names)}")
    print(plan.as_text())
    for skipped in catalogue.skipped:
        print(f"notice: {skipped}")
    return EXIT_OK


def cmd_dag(args: argparse.Namespace) -> int:
    """Print the calibration plan as text or Graphviz dot."""
    cfg = _load(args.config)
    catalogue, plan = _load_plan(cfg)
    print(plan.as_dot() if args.format == "dot" else plan.as_text())
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate the bucket's synthetic data, truth and run list."""
    from .dataset import simulate_config

    from .atomic import clean_bucket_temp_files

    cfg = _load(args.config)
    clean_bucket_temp_files(cfg)  # leftovers of a killed earlier simulation (.raw_*.root.*.tmp)
    summary = simulate_config(cfg, force=args.force)
    print(summary)
    return EXIT_OK


def cmd_rundb(args: argparse.Namespace) -> int:
    """Write the bucket's RunDB CSV snapshot."""
    from .rundb import snapshot_for_config

    cfg = _load(args.config)
    frame = snapshot_for_config(cfg)
    print(f"wrote {cfg.rundb.snapshot} ({len(frame)} runs)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run the bucket's whole DAG (or explain it with --dry-run)."""
    from .tasks.driver import run_bucket

    cfg = _load(args.config)
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be >= 1")
    outcome = run_bucket(cfg, workers=args.workers, dry_run=args.dry_run, only=args.only, rerun=args.rerun or [])
    return outcome.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    """Print every task's state, duration and report; the prompt tag's state; calibrations' expert sign-off."""
    from .conditions.backend import backend_for
    from .tasks.driver import format_table, status_rows

    from .conditions.verify import bucket_databases, damage_report, verify_databases

    cfg = _load(args.config)
    rows = status_rows(cfg)
    print(format_table(rows))
    damage = verify_databases(bucket_databases(cfg))  # every payload in force checked against its checksum
    print("\n" + "\n".join(damage_report(damage)) if damage else "\nconditions database: every payload intact")
    code = EXIT_FAILURE if damage else EXIT_OK
    try:
        backend = backend_for(cfg)
        state = backend.state()
        print(f"\nprompt global tag {backend.tag} ({backend.kind}): {state.value if state else 'not created yet'}")
    except B2lucaError as exc:  # conditions DB unreachable: the rest still stands
        print(f"\nprompt global tag {cfg.conditions.prompt_global_tag}: state not available ({exc})")
    _print_batch_status(cfg)
    try:
        from .report import read_signoffs

        signoffs = read_signoffs(cfg.report, cfg.work_dir, cfg.name)
    except (ReportConfigError, TransportError) as exc:  # GitLab unreachable: the table above still stands
        print(f"\nexpert sign-off: not available ({exc})")
        return code
    if signoffs:
        print("\nexpert sign-off:")
        for name, signoff in sorted(signoffs.items()):
            print(f"  {name}: {signoff}")
    return code


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish the prompt global tag (TESTING -> VALIDATED -> PUBLISHED) once every calibration is signed off."""
    from .conditions.backend import backend_for
    from .conditions.lifecycle import publish
    from .report import open_reporter, read_signoffs

    cfg = _load(args.config)
    catalogue, _ = _load_plan(cfg)
    signoffs = read_signoffs(cfg.report, cfg.work_dir, cfg.name)
    reporter = open_reporter(cfg.report, cfg.work_dir, cfg.name, preflight=False)
    backend = backend_for(cfg)
    state = publish(backend, reporter.emit, sorted(catalogue.calibrations), signoffs)
    pending = reporter.flush()
    print(f"prompt global tag {backend.tag} ({backend.kind}): {state.value}")
    if pending:
        print(f"{pending} report event(s) wait in the outbox; deliver them with: b2luca report --flush {cfg.path}")
    return EXIT_OK


def _print_batch_status(cfg: BucketConfig) -> None:
    """A run in progress (from its progress file) and the batch job ledger, if any."""
    from .tasks.ledger import format_ledger, ledger_path, read_ledger
    from .tasks.progress import Progress, read_progress

    snap = read_progress(cfg.work_dir)
    if snap is not None and snap["alive"]:
        print(f"\nrun in progress (driver pid {snap['pid']}): {Progress.line(snap)}")
    jobs = read_ledger(ledger_path(cfg.work_dir))
    if jobs:
        print(f"\nbatch jobs (ledger {ledger_path(cfg.work_dir)}):\n{format_ledger(jobs)}")


def cmd_report(args: argparse.Namespace) -> int:
    """Deliver report events still waiting in the outbox."""
    from .report import flush

    cfg = _load(args.config)
    pending = flush(cfg.report, cfg.work_dir, cfg.name)
    print(f"{pending} report event(s) still pending" if pending else "outbox empty: every report event delivered")
    return EXIT_OK if pending == 0 else EXIT_FAILURE


def cmd_align(args: argparse.Namespace) -> int:
    """Solve an alignment problem from a pede steering file."""
    from .alignment import cli as align_cli

    rc = int(align_cli.run(args))
    if getattr(args, "console", False):  # the console script: no interpreter teardown (see exit_now)
        align_cli.exit_now(rc)
    return rc


def _add_align_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from .alignment import cli as align_cli
    except ImportError:  # pragma: no cover - the solver is part of the package
        parser.add_argument("steering")
        return
    align_cli.add_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``b2luca`` with all subcommands."""
    parser = argparse.ArgumentParser(prog="b2luca", description="Belle II prompt-calibration orchestrator.")
    parser.add_argument("--version", action="version", version=f"b2luca {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("check", cmd_check, "validate the bucket config and calibration catalogue, print the plan")
    p.add_argument("config")
    p = add("dag", cmd_dag, "print the calibration plan")
    p.add_argument("config")
    p.add_argument("--format", choices=["text", "dot"], default="text")
    p = add("simulate", cmd_simulate, "simulate the bucket's synthetic data (toy detector)")
    p.add_argument("config")
    p.add_argument("--force", action="store_true", help="simulate again even when the data exists")
    p = add("rundb", cmd_rundb, "write the bucket's RunDB CSV snapshot")
    p.add_argument("config")
    p = add("run", cmd_run, "run the bucket's whole calibration loop")
    p.add_argument("config")
    p.add_argument("--workers", type=int, default=None, help="parallel luigi workers (default: batch.workers)")
    p.add_argument("--dry-run", action="store_true", help="say what would run and why; change nothing")
    p.add_argument("--only", metavar="NAME", help="run only this calibration (and what it needs)")
    p.add_argument("--rerun", metavar="NAME", action="append",
                   help="invalidate this calibration and what depends on it, then run (repeatable)")
    p = add("status", cmd_status, "print every task's state, duration and report location")
    p.add_argument("config")
    p = add("publish", cmd_publish, "publish the prompt global tag once every calibration is signed off")
    p.add_argument("config")
    p = add("report", cmd_report, "deliver pending report events")
    p.add_argument("config")
    p.add_argument("--flush", action="store_true", required=True, help="deliver what waits in the outbox")
    p = add("align", cmd_align, "solve an alignment problem from a pede steering file")
    _add_align_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``b2luca`` console script (``argv`` None: this process is that script's, which
    ``b2luca align`` ends itself once its results are written)."""
    console = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if console and argv[:1] == ["align"]:
        gc.disable()  # its imports without the cyclic GC's passes; b2luca.alignment.cli.run enables it again
    if "--batch-runner" in argv:  # b2luigi's job entry: run one task of the bucket inside a batch job
        return _batch_runner(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.console = console
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return args.func(args)
    except B2lucaError as exc:
        print(f"b2luca: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # the run cancelled its batch jobs already
        print("b2luca: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line here, the whole traceback in a file
        where = _write_traceback(exc)
        print(f"b2luca: internal error: {type(exc).__name__}: {exc} (traceback written to {where})", file=sys.stderr)
        return EXIT_FAILURE


def _batch_runner(argv: list[str]) -> int:
    """``b2luca --batch-runner --task-id ID --config YAML`` (what a batch job runs): exit 0 only on success."""
    parser = argparse.ArgumentParser(prog="b2luca --batch-runner")
    parser.add_argument("--batch-runner", action="store_true", required=True)
    parser.add_argument("--task-id", required=True)
    parser.add_argument("--config", required=True, help="the bucket YAML (the driver's path, verbatim)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .tasks.batch import run_job

    try:
        run_job(args.config, args.task_id)
    except B2lucaError as exc:
        print(f"b2luca: error: {exc}", file=sys.stderr)
        return exc.exit_code  # every B2lucaError carries 1 or 2
    return EXIT_OK


def _write_traceback(exc: BaseException) -> str:
    """Write ``exc``'s traceback to a new file in the temporary folder; return its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="b2luca-traceback-", suffix=".txt")
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(traceback.format_exception(exc)))
    return path

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
