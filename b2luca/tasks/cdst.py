"""cDST production: reconstruct one run's raw data with the constants produced so far, write cDST files
(the work of :class:`~b2luca.tasks.graph.CdstProduction`).

The task is complete when its marker exists.  After a raw calibration is re-run (``--rerun``), the
driver deletes the markers, so production runs again; :func:`b2luca.production.produce_run` then
recomputes only the branch groups whose constants changed (see :mod:`b2luca.production`).
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_json_atomic
from ..dataset import run_root
from ..enums import Stage
from ..iov import ExpRun
from ..production import produce_run
from .context import BucketContext, production_task_name
from .reporting import reported


def produce(ctx: BucketContext, run: int, output: Path) -> None:
    """Reconstruct every data tag of ``run`` into cDST files; write the marker ``output`` last."""
    cfg = ctx.cfg
    exprun = ExpRun(cfg.bucket.experiment, int(run))
    with reported(ctx, production_task_name(run), stage=Stage.PRODUCTION, group=Stage.PRODUCTION) as report:
        summary = produce_run(run_root(cfg.data.raw_directory, exprun), run_root(cfg.data.cdst_directory, exprun),
                              ctx.chain(), exprun)
    write_json_atomic(output, {"run": int(run), "start": report.start, "duration": report.elapsed(), **summary})
