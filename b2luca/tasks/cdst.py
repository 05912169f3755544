"""cDST production: reconstruct a group of runs' raw data with the constants produced so far, write cDST
files (the work of :class:`~b2luca.tasks.graph.CdstProduction`).

Runs are grouped by data volume (:func:`production_groups`, ``data.production_task_mb``): a bucket of
hundreds of small runs becomes a few tasks (a few batch jobs), each reading the constants once and
fitting the tracks of all its files in large batches, so the cost grows with the data, not with the
number of runs.  The outputs stay per run: every run has its cDST files and manifest, and its marker
``<work_dir>/cdst_production/r<RUN>.json``; a task is complete when the markers of all its runs exist.
After a raw calibration is re-run (``--rerun``), the driver deletes the markers, so production runs
again; :func:`b2luca.production.produce_runs` then recomputes only the branch groups whose constants
changed (see :mod:`b2luca.production`).
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_json_atomic_many
from ..dataset import run_root
from ..enums import Stage
from ..iov import ExpRun
from ..payload_deps import check_production_reads
from ..production import produce_runs, warm_constants
from .context import BucketContext, production_task_name
from .reporting import reported


def production_groups(ctx: BucketContext) -> list[tuple[int, ...]]:
    """The runs of each cDST production task (:attr:`BucketContext.production_groups`: computed once per
    context, i.e. once per ``b2luca run`` and per batch job)."""
    return ctx.production_groups


def production_group(ctx: BucketContext, first_run: int) -> tuple[int, ...]:
    """The runs of the production task that starts at ``first_run`` (just that run when no group starts there)."""
    for group in production_groups(ctx):
        if group[0] == int(first_run):
            return group
    return (int(first_run),)


def group_task_name(runs: tuple[int, ...]) -> str:
    """``CdstProduction:r00003`` or ``CdstProduction:r00001-r00025``."""
    return production_task_name(runs[0], runs[-1])


def prepare(ctx: BucketContext, runs: tuple[int, ...]) -> None:
    """In the driver, before luigi forks the production task of ``runs`` (several workers): the payloads of its
    first run's constants into the driver's cache, so that this task's process and every later one read them from
    memory instead of each reading and verifying them again (:func:`~b2luca.production.warm_constants`)."""
    warm_constants(ctx.chain(), ExpRun(ctx.cfg.bucket.experiment, int(runs[0])))


def produce(ctx: BucketContext, runs: tuple[int, ...], outputs: list[Path]) -> None:
    """Reconstruct every data tag of ``runs`` into cDST files; write the runs' markers ``outputs`` last."""
    cfg = ctx.cfg
    expruns = [ExpRun(cfg.bucket.experiment, int(run)) for run in runs]
    name = group_task_name(runs)
    with reported(ctx, name, stage=Stage.PRODUCTION, group=Stage.PRODUCTION) as report:
        chain = ctx.chain()
        summaries = produce_runs([(run_root(cfg.data.raw_directory, er), run_root(cfg.data.cdst_directory, er), er)
                                  for er in expruns], chain)
        # before any marker: a production that read a payload it does not wait for must not look complete
        check_production_reads(ctx.catalogue, ctx.plan, [str(item["name"]) for item in chain.lookups()], name)
    duration = report.elapsed()
    # the markers, each atomic and durable, with one disk flush for all (one fsync per run cost 2-8 ms each)
    write_json_atomic_many([(output, {"run": int(run), "runs": [int(r) for r in runs], "start": report.start,
                                      "duration": duration, **summary})
                            for run, output, summary in zip(runs, outputs, summaries)])
