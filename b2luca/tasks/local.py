"""Local calibrations: copy the experts' offline payloads into the prompt global tag."""

from __future__ import annotations

from pathlib import Path

import luigi

from ..conditions import GlobalTag, copy_payloads
from .base import BucketTask, BucketWrapperTask
from ..atomic import write_json_atomic
from ..paths import check_name, under
from .context import STAGE_LOCAL


class CopyLocalPayloads(BucketTask):
    """Copy the payloads of one subsystem from one source global tag, IoV set to the bucket."""

    subsystem = luigi.Parameter()
    source_tag = luigi.Parameter()

    @property
    def task_name(self) -> str:
        return f"Local{self.subsystem}:{self.source_tag}"

    def output_path(self) -> Path:
        name = f"{check_name(self.subsystem, 'local_calibrations subsystem')}_" \
               f"{check_name(self.source_tag, 'local_calibrations global tag')}.json"
        return under(self.ctx.work_dir / "local", name, what="local calibration output")

    def run(self) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        start = self.now()
        ctx.emit("task_started", self.task_name, stage=STAGE_LOCAL, group=STAGE_LOCAL)
        names = cfg.local_calibrations[self.subsystem][self.source_tag]
        try:
            source = GlobalTag.open(cfg.conditions.directory, self.source_tag)
            entries = copy_payloads(source, ctx.prompt_tag, names, cfg.prompt_iov)
        except Exception as exc:
            ctx.emit("task_failed", self.task_name, reason=str(exc), log_tail="", log_path="",
                     duration=self.now() - start, validation_failed=False)
            raise
        payloads = [{"name": e.name, "revision": e.revision, "iov": str(e.iov)} for e in entries]
        ctx.emit("payloads", self.task_name, global_tag=cfg.conditions.prompt_global_tag, payloads=payloads)
        ctx.emit("task_succeeded", self.task_name, duration=self.now() - start)
        write_json_atomic(self.output_path(), {"status": "success", "source_tag": self.source_tag,
                                               "payloads": payloads, "start": start, "duration": self.now() - start})


class LocalCalibrations(BucketWrapperTask):
    """All local calibrations of the bucket (one copy task per subsystem and source global tag)."""

    def requires(self):
        return [CopyLocalPayloads(config_path=self.config_path, subsystem=sub, source_tag=tag)
                for sub, tags in self.ctx.cfg.local_calibrations.items() for tag in tags]
