"""The base of every bucket task: one parameter (the config path), file outputs, ``req``."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, TypeVar

import b2luigi
import luigi

from ..failures import cause_line
from .context import BucketContext, context_for

T = TypeVar("T", bound=luigi.Task)
_PARAMS: dict[type, list[tuple[str, luigi.Parameter]]] = {}  # get_params of each task class


class _BucketParameters(luigi.Task):
    """What every task of a bucket shares: the config path, the context built from it, ``req``."""

    config_path = luigi.Parameter(description="path of the bucket YAML")

    @property
    def ctx(self) -> BucketContext:
        """The (per-process cached) context of this task's bucket."""
        return context_for(self.config_path)

    @property
    def task_name(self) -> str:
        """The name the task has in tables, report events and issues (the class name unless overridden)."""
        return type(self).__name__

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        """luigi's ``(name, Parameter)`` list, computed once per class: luigi walks ``dir(cls)`` for it at
        every task instantiation and every :meth:`req` (~1 s of a 35-task no-op bucket, issue 15).  The
        bucket's task classes get no parameters after they are defined."""
        params = _PARAMS.get(cls)
        if params is None:
            params = _PARAMS[cls] = super().get_params()
        return list(params)

    @classmethod
    def req(cls: type[T], other: luigi.Task, **params: Any) -> T:
        """An instance of this class with every parameter it shares with ``other`` copied (like law's ``req``).

        ``CalibrationTask.req(self, name=dep)`` is ``CalibrationTask(config_path=self.config_path, name=dep)``.
        """
        shared = {name: getattr(other, name) for name in cls.get_param_names(include_significant=True)
                  if name not in params and hasattr(other, name)}
        return cls(**shared, **params)


class BucketTask(_BucketParameters, b2luigi.Task):
    """A task of one bucket; everything else is derived from the bucket config.

    Concrete tasks define ``output_path() -> Path``: the file whose existence marks the task
    complete, written last and atomically.
    """

    @abc.abstractmethod  # luigi's task metaclass is an ABCMeta: a task without it cannot be instantiated
    def output_path(self) -> Path:
        """The file whose existence marks this task complete."""

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(str(self.output_path()))

    def prepare_in_driver(self) -> None:
        """Read, in the driver, what this task's forked process would otherwise read first (several luigi
        workers fork one process per task: a cache filled here is inherited by every later task process, one
        filled in a task process dies with it).  Only warms per-process caches that check their files'
        identity; never needed for correctness (the task reads everything itself).  Default: nothing."""

    def on_failure(self, exception: BaseException) -> str:
        """luigi's failure explanation with the one-line cause first (the driver shows that line)."""
        return f"{cause_line(exception)}\n{super().on_failure(exception)}"


class BucketWrapperTask(_BucketParameters, b2luigi.WrapperTask):
    """A wrapper task of one bucket (complete when its requirements are)."""
