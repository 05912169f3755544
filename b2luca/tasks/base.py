"""The base of every bucket task: one parameter (the config path), file outputs, timing."""

from __future__ import annotations

import time
import b2luigi
import luigi

from ..failures import cause_line
from .context import BucketContext, context_for


class BucketTask(b2luigi.Task):
    """A task of one bucket; everything else is derived from the bucket config."""

    config_path = luigi.Parameter(description="path of the bucket YAML")

    @property
    def ctx(self) -> BucketContext:
        return context_for(self.config_path)

    # Concrete tasks define ``output_path() -> Path``: the file whose existence marks the task
    # complete, written last and atomically.
    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.output_path()))  # type: ignore[attr-defined]

    @staticmethod
    def now() -> float:
        return time.time()

    def on_failure(self, exception: BaseException) -> str:
        """luigi's failure explanation with the one-line cause first (the driver shows that line)."""
        return f"{cause_line(exception)}\n{super().on_failure(exception)}"


class BucketWrapperTask(b2luigi.WrapperTask):
    """A wrapper task of one bucket (complete when its requirements are)."""

    config_path = luigi.Parameter(description="path of the bucket YAML")

    @property
    def ctx(self) -> BucketContext:
        return context_for(self.config_path)
