"""Per-process state of a bucket run: the config, plan, paths, database chain and reporter.

Luigi workers run tasks in child processes; every task carries only the config path as a parameter
and rebuilds what it needs from it here (cached once per process).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from ..catalogue import Catalogue, Plan, build_plan, discover
from ..conditions import DatabaseChain, GlobalTag, LocalDatabase
from ..config import BucketConfig, load_config
from ..paths import check_component, check_name, under

STAGE_LOCAL, STAGE_RAW, STAGE_PRODUCTION, STAGE_CDST = "local", "raw", "cdst_production", "cdst"


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def group_name(stage: str, level: int | str) -> str:
    """The name of a group: ``raw-0``, ``cdst-1``, ``local``, ``cdst_production``."""
    return stage if stage in (STAGE_LOCAL, STAGE_PRODUCTION) else f"{stage}-{level}"


@dataclass
class BucketContext:
    """Everything tasks derive from the bucket config."""

    cfg: BucketConfig

    @cached_property
    def catalogue(self) -> Catalogue:
        catalogue = discover(self.cfg.calibrations.directory)
        if self.cfg.calibrations.select:
            catalogue = catalogue.select(self.cfg.calibrations.select)
        return catalogue

    @cached_property
    def plan(self) -> Plan:
        return build_plan(self.catalogue)

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
    def reporter(self):
        from ..report import open_reporter

        # The driver did the pre-flight check (and stopped on a bad GitLab config); workers must not.
        return open_reporter(self.cfg.report, self.work_dir, self.cfg.name, preflight=False)

    def emit(self, kind: str, task: str | None = None, **data: Any) -> None:
        """Emit a report event; reporting trouble never fails a task."""
        try:
            self.reporter.emit(kind, task=task, **data)
        except Exception as exc:  # the transport layer should not raise; belt and braces
            import logging

            logging.getLogger("b2luca.report").warning("report event %s for %s not recorded: %s", kind, task, exc)


@lru_cache(maxsize=8)
def context_for(config_path: str) -> BucketContext:
    """The (per-process cached) context of the bucket config at ``config_path``."""
    return BucketContext(load_config(config_path))
