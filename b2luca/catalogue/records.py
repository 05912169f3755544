"""The catalogue's records: one :class:`CalibrationInfo` per calibration, the :class:`Catalogue` of a directory."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CatalogueError
from .prompt_api import CalibrationSettings, ValidationSettings, json_config

__all__ = ["CalibrationInfo", "Catalogue", "SkippedScript", "find_cycles"]


@dataclass(frozen=True)
class SkippedScript:
    """A script of the directory that declares no settings (shown as a notice by ``b2luca check``)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: skipped, {self.reason}"


@dataclass(frozen=True)
class CalibrationInfo:
    """One calibration of the catalogue: its settings, script and (optional) validation."""

    settings: CalibrationSettings
    script_path: Path | None = None
    validation_path: Path | None = None
    validation: ValidationSettings | None = None
    #: module-level functions of the script (e.g. ``calibrate``, ``get_calibrations``)
    functions: frozenset[str] = frozenset()
    #: module-level functions of the validation script (e.g. ``run_validation``)
    validation_functions: frozenset[str] = frozenset()
    stage: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage", self.settings.stage)

    @property
    def name(self) -> str:
        """The calibration name."""
        return self.settings.name

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Names of the calibrations this one depends on."""
        return self.settings.depends_on_names

    @property
    def where(self) -> str:
        """The script path, for messages."""
        return str(self.script_path) if self.script_path else "<no script>"

    def merged_expert_config(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Script defaults updated by ``overrides`` (``{**defaults, **overrides}``, as caf_config.json)."""
        merged = copy.deepcopy(self.settings.expert_config)
        merged.update(copy.deepcopy(dict(overrides or {})))
        json_config(merged, f"{self.name} (merged expert_config)")
        return merged


class Catalogue:
    """Calibrations by name (``.calibrations``), in discovery order."""

    def __init__(self, calibrations: Iterable[CalibrationInfo], directory: Path | None = None,
                 skipped: Iterable[SkippedScript] = ()):
        self.directory = Path(directory) if directory is not None else None
        #: scripts without settings, for notices
        self.skipped: tuple[SkippedScript, ...] = tuple(skipped)
        self.calibrations: dict[str, CalibrationInfo] = {}
        duplicates = []
        for info in calibrations:
            if not isinstance(info, CalibrationInfo):
                raise TypeError(f"Catalogue takes CalibrationInfo objects, got {info!r}")
            if info.name in self.calibrations:
                first = self.calibrations[info.name]
                duplicates.append(f"duplicate calibration name {info.name!r}: {first.where} and {info.where}")
                continue
            self.calibrations[info.name] = info
        if duplicates:
            raise CatalogueError("\n".join(duplicates))

    def __len__(self) -> int:
        return len(self.calibrations)

    def __iter__(self):
        return iter(self.calibrations.values())

    def __contains__(self, name: object) -> bool:
        return name in self.calibrations

    def __getitem__(self, name: str) -> CalibrationInfo:
        try:
            return self.calibrations[name]
        except KeyError:
            raise CatalogueError(self._unknown([name])) from None

    @property
    def names(self) -> list[str]:
        """Calibration names in catalogue order."""
        return list(self.calibrations)

    def _unknown(self, names: list[str]) -> str:
        where = f" in {self.directory}" if self.directory else ""
        return (f"unknown calibration(s) {', '.join(map(repr, names))}{where}; "
                f"known: {', '.join(self.calibrations) or '(none)'}")

    def select(self, names: Iterable[str] | None) -> "Catalogue":
        """A catalogue with only ``names`` (all when None).

        Unknown names are an error, and so is selecting a calibration whose dependency is not
        selected (the message names both and their scripts).
        """
        if names is None:
            return self
        if isinstance(names, str):
            names = [names]
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self.calibrations]
        if unknown:
            raise CatalogueError(self._unknown(unknown))
        chosen = set(wanted)
        problems = []
        for name in wanted:
            info = self.calibrations[name]
            for dep in info.depends_on:
                if dep not in chosen:
                    dep_where = self.calibrations[dep].where if dep in self.calibrations else "not in the catalogue"
                    problems.append(f"calibration {name!r} ({info.where}) depends on {dep!r} ({dep_where}), "
                                    f"which is not selected: select {dep!r} too or drop {name!r}")
        if problems:
            raise CatalogueError("\n".join(problems))
        return Catalogue((info for n, info in self.calibrations.items() if n in chosen), self.directory,
                         self.skipped)


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Distinct cycles found by depth-first search, each as ``[a, b, ..., a]``."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for root in graph:
        if root in state:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(graph.get(root, ())))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append(cycle)
            elif child not in state and child in graph:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(graph.get(child, ()))))
    return cycles
