"""Local calibrations: copy the experts' offline payloads into the prompt global tag (the work of
:class:`~b2luca.tasks.graph.CopyLocalPayloads`)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_json_atomic
from ..conditions import GlobalTag, copy_payloads
from ..enums import Stage, TaskStatus
from .context import BucketContext, local_task_name
from .reporting import reported


def copy_local_payloads(ctx: BucketContext, subsystem: str, source_tag: str, output: Path) -> None:
    """Copy one subsystem's payloads from ``source_tag`` (IoV set to the bucket's); write ``output`` last."""
    cfg = ctx.cfg
    name = local_task_name(subsystem, source_tag)
    with reported(ctx, name, stage=Stage.LOCAL, group=Stage.LOCAL) as report:
        names = cfg.local_calibrations[subsystem][source_tag]
        source = GlobalTag.open(cfg.conditions.directory, source_tag)
        entries = copy_payloads(source, ctx.prompt_tag, names, cfg.prompt_iov)
        payloads = [{"name": e.name, "revision": e.revision, "iov": str(e.iov)} for e in entries]
        ctx.emit("payloads", name, global_tag=cfg.conditions.prompt_global_tag, payloads=payloads)
    write_json_atomic(output, {"status": TaskStatus.SUCCESS, "source_tag": source_tag, "payloads": payloads,
                               "start": report.start, "duration": report.elapsed()})
