"""Per-process state of a bucket run: the config, plan, paths, database chain and reporter.

Luigi workers run tasks in child processes; every task carries only the config path as a parameter
and rebuilds what it needs from it here (cached once per process).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from ..catalogue import Catalogue, Plan, build_plan, discover
from ..conditions import DatabaseChain, GlobalTag, LocalDatabase
from ..config import BucketConfig, load_config
from ..config_checks import expert_config_problems, raise_problems
from ..dataset import production_run_groups
from ..enums import Stage
from ..paths import check_component, check_name, under
from ..report import Reporter, ReportEvent, open_reporter

#: During a bucket run the local report Markdown is re-rendered at most this often by the tasks' events;
#: the driver's progress tick and its final flush bring it up to date (every event is still appended durably).
LOCAL_REPORT_INTERVAL_S = 1.0

# The stage names as they were before the Stage enum (the same objects), for code that imports them from here.
STAGE_LOCAL, STAGE_RAW, STAGE_PRODUCTION, STAGE_CDST = Stage.LOCAL, Stage.RAW, Stage.PRODUCTION, Stage.CDST


def read_json(path: Path) -> Any:
    """The parsed content of a JSON file."""
    return json.loads(Path(path).read_text())


def group_name(stage: str, level: int | str | None) -> str:
    """The name of a group: ``raw-0``, ``cdst-1``, ``local``, ``cdst_production``."""
    return f"{stage}-{level}" if Stage(stage).has_levels else str(stage)


def parse_group(group: str) -> tuple[Stage, int | None]:
    """``raw-1`` -> (Stage.RAW, 1); ``local`` -> (Stage.LOCAL, None): the inverse of :func:`group_name`."""
    if group in (Stage.LOCAL, Stage.PRODUCTION):
        return Stage(group), None
    stage, _, level = group.rpartition("-")
    return Stage(stage), int(level)


# --- display names: the one place that builds the name a task shows in tables, events and reports ----
def local_task_name(subsystem: str, source_tag: str) -> str:
    """``LocalPXD:staging_pxd_demo``: the copy of one subsystem's payloads from one global tag."""
    return f"Local{subsystem}:{source_tag}"


def production_task_name(run: int, last: int | None = None) -> str:
    """``CdstProduction:r00003``: the cDST production of one run; ``CdstProduction:r00001-r00025``: of the
    group of runs from ``run`` to ``last``."""
    if last is None or int(last) == int(run):
        return f"CdstProduction:r{int(run):05d}"
    return f"CdstProduction:r{int(run):05d}-r{int(last):05d}"


def archive_task_name(group: str) -> str:
    """``ArchiveLogs:raw-0``: the archiving of one group."""
    return f"ArchiveLogs:{group}"


@dataclass
class BucketContext:
    """Everything tasks derive from the bucket config."""

    cfg: BucketConfig
    #: events made by :meth:`emit_later`, appended with the next :meth:`emit` or :meth:`flush_events`
    _pending_events: list[ReportEvent] = field(default_factory=list, init=False, repr=False, compare=False)

    @cached_property
    def catalogue(self) -> Catalogue:
        catalogue = discover(self.cfg.calibrations.directory, self.cfg.calibrations.extra_input_data_filters)
        if self.cfg.calibrations.select:
            catalogue = catalogue.select(self.cfg.calibrations.select)
        # overrides vs. the scripts' defaults
        raise_problems(expert_config_problems(self.cfg.path, self.cfg.calibrations.expert_config, {
            name: info.settings.expert_config for name, info in catalogue.calibrations.items()}))
        return catalogue

    @cached_property
    def plan(self) -> Plan:
        return build_plan(self.catalogue)

    @cached_property
    def production_groups(self) -> list[tuple[int, ...]]:
        """The runs of each cDST production task, from the raw data on disk (read once per context)."""
        return production_run_groups(self.cfg)

    # --- paths --------------------------------------------------------------------------------
    @property
    def work_dir(self) -> Path:
        return self.cfg.work_dir

    def calibration_dir(self, name: str) -> Path:
        return under(self.work_dir / "calibrations", check_component(name, "calibration name"),
                     what="calibration")

    def result_path(self, name: str) -> Path:
        """The result file of a calibration: its luigi output, written last."""
        return self.calibration_dir(name) / "result.json"

    @property
    def settings_file(self) -> Path:
        return self.work_dir / "settings" / "settings.json"

    def settings(self) -> dict[str, Any]:
        """The pulled settings: ``{"commit": str|None, "expert_configs": {name: {...}}}``."""
        return read_json(self.settings_file)

    # --- conditions ---------------------------------------------------------------------------
    @property
    def prompt_tag(self) -> GlobalTag:
        return GlobalTag.create(self.cfg.conditions.directory, self.cfg.conditions.prompt_global_tag)

    def chain_paths(self) -> list[Path]:
        """Database directories in look-up order: the prompt global tag, then the configured chain."""
        root = self.cfg.conditions.directory
        names = [self.cfg.conditions.prompt_global_tag, *self.cfg.conditions.database_chain]
        return [under(root, check_name(name, "global tag"), what="conditions global tag") for name in names]

    def chain(self) -> DatabaseChain:
        return DatabaseChain([LocalDatabase(p) for p in self.chain_paths()])

    def reference_paths(self) -> list[str]:
        ref = self.cfg.conditions.reference_global_tag
        if not ref:
            return []
        path = under(self.cfg.conditions.directory, check_name(ref, "conditions.reference_global_tag"),
                     what="conditions global tag")
        return [str(path)] if path.is_dir() else []

    # --- reporting ----------------------------------------------------------------------------
    @cached_property
    def reporter(self) -> Reporter:
        # The driver did the pre-flight check (and stopped on a bad GitLab config); workers must not.
        return open_reporter(self.cfg.report, self.work_dir, self.cfg.name, preflight=False,
                             local_interval_s=LOCAL_REPORT_INTERVAL_S)

    def emit(self, kind: str, task: str | None = None, **data: Any) -> None:
        """Emit a report event, after the events :meth:`emit_later` queued, all in one durable append;
        reporting trouble never fails a task."""
        try:
            events = [*self._pending_events, self.reporter.event(kind, task=task, **data)]
            self._pending_events.clear()
            self.reporter.emit_many(events)
        except Exception as exc:  # the transport layer should not raise; belt and braces
            logging.getLogger("b2luca.report").warning("report event %s for %s not recorded: %s", kind, task, exc)

    def emit_later(self, kind: str, task: str | None = None, **data: Any) -> None:
        """Make a report event now (its time is now) but append it with the next :meth:`emit` or
        :meth:`flush_events`: for events after which no work comes before the next emit (a step's ``done``
        and the next step's ``running``), so that they cost one durable append (one fsync), not one each."""
        try:
            self._pending_events.append(self.reporter.event(kind, task=task, **data))
        except Exception as exc:  # a malformed event: logged, as emit does
            logging.getLogger("b2luca.report").warning("report event %s for %s not recorded: %s", kind, task, exc)

    def flush_events(self) -> None:
        """Append the events :meth:`emit_later` queued (nothing when none are)."""
        events = list(self._pending_events)
        self._pending_events.clear()
        if events:
            try:
                self.reporter.emit_many(events)
            except Exception as exc:  # belt and braces, as in emit
                logging.getLogger("b2luca.report").warning("%d report event(s) not recorded: %s", len(events), exc)


@lru_cache(maxsize=8)
def context_for(config_path: str) -> BucketContext:
    """The (per-process cached) context of the bucket config at ``config_path``."""
    return BucketContext(load_config(config_path))
