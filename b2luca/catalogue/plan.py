"""The plan: the catalogue ordered into stages (raw, cDST production, cdst) of groups, and its renderers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import enums
from ..errors import CatalogueError
from .prompt_api import CDST, RAW
from .records import Catalogue, find_cycles

__all__ = ["CDST", "CDST_PRODUCTION", "RAW", "Plan", "Stage", "build_plan", "plan_as_dot", "plan_as_text"]

CDST_PRODUCTION = enums.Stage.PRODUCTION
_STAGE_TITLES: dict[str, str] = {RAW: "raw calibrations", CDST_PRODUCTION: "cDST production", CDST: "cDST calibrations"}


@dataclass
class Stage:
    """One stage of the plan: ``raw``, ``cdst_production`` or ``cdst``; groups run one after another,
    the calibrations of a group independently (in parallel)."""

    name: str
    groups: list[list[str]] = field(default_factory=list)

    @property
    def title(self) -> str:
        """Human title of the stage."""
        return _STAGE_TITLES.get(self.name, self.name)

    @property
    def calibrations(self) -> list[str]:
        """All calibrations of the stage in order."""
        return [name for group in self.groups for name in group]


class Plan:
    """Stages in execution order: raw groups, cDST production, cdst groups."""

    def __init__(self, catalogue: Catalogue, stages: list[Stage]):
        self.catalogue = catalogue
        self.stages = stages
        self._where: dict[str, tuple[str, int]] = {
            name: (stage.name, level)
            for stage in stages for level, group in enumerate(stage.groups) for name in group}

    @property
    def order(self) -> list[str]:
        """All calibrations in execution order."""
        return [name for stage in self.stages for name in stage.calibrations]

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def group_of(self, name: str) -> tuple[str, int]:
        """``(stage name, level)`` of calibration ``name``."""
        if name not in self._where:
            raise CatalogueError(f"calibration {name!r} is not in the plan; planned: {', '.join(self.order)}")
        return self._where[name]

    def _closure(self, name: str, forward: bool) -> list[str]:
        self.group_of(name)
        edges: dict[str, set[str]] = {n: set() for n in self._where}
        for info in self.catalogue:
            for dep in info.depends_on:
                if forward:
                    edges[dep].add(info.name)
                else:
                    edges[info.name].add(dep)
        found: set[str] = set()
        todo = [name]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in found:
                    found.add(nxt)
                    todo.append(nxt)
        return [n for n in self.order if n in found]

    def dependents(self, name: str) -> list[str]:
        """Calibrations that depend on ``name``, directly or transitively, in plan order."""
        return self._closure(name, forward=True)

    def dependencies(self, name: str) -> list[str]:
        """Calibrations ``name`` depends on, directly or transitively, in plan order."""
        return self._closure(name, forward=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: stages with groups."""
        return {"stages": [{"name": s.name, "groups": [list(g) for g in s.groups]} for s in self.stages]}

    def as_text(self) -> str:
        """A readable plan (see :func:`plan_as_text`)."""
        return plan_as_text(self)

    def as_dot(self) -> str:
        """The plan as a Graphviz digraph (see :func:`plan_as_dot`)."""
        return plan_as_dot(self)


def build_plan(catalogue: Catalogue) -> Plan:
    """Order ``catalogue`` into stages: raw groups, cDST production, cdst groups.

    Inside a stage a group is a topological level: level 0 has no dependency inside the stage,
    level n depends on something at level n-1. A cdst calibration may depend on a raw one (stage order
    satisfies it). Raises :class:`CatalogueError` listing every missing dependency, dependency cycle
    (``a -> b -> a``) and raw calibration that depends on a cdst one, with the scripts involved.
    """
    infos = catalogue.calibrations
    problems: list[str] = []
    for name, info in infos.items():
        for dep in info.depends_on:
            if dep not in infos:
                problems.append(f"missing dependency: {name!r} ({info.where}) depends on {dep!r}, which is not "
                                f"in the catalogue" + (f" of {catalogue.directory}" if catalogue.directory else ""))
    graph = {name: [d for d in info.depends_on if d in infos] for name, info in infos.items()}
    for cycle in find_cycles(graph):
        problems.append("dependency cycle: " + " -> ".join(f"{n} ({infos[n].where})" for n in cycle))
    for name, info in infos.items():
        for dep in graph[name]:
            if info.stage == RAW and infos[dep].stage == CDST:
                problems.append(f"raw calibration {name!r} ({info.where}) depends on cdst calibration {dep!r} "
                                f"({infos[dep].where}); raw calibrations run before cDST production")
    if problems:
        raise CatalogueError("\n".join(problems))

    level: dict[str, int] = {}

    def level_of(name: str) -> int:
        if name not in level:
            same_stage = [d for d in graph[name] if infos[d].stage == infos[name].stage]
            level[name] = 1 + max((level_of(d) for d in same_stage), default=-1)
        return level[name]

    stages = []
    for stage_name in (RAW, CDST_PRODUCTION, CDST):
        members = [n for n, info in infos.items() if info.stage == stage_name]
        depth = max((level_of(n) for n in members), default=-1) + 1
        groups = [sorted(n for n in members if level_of(n) == lv) for lv in range(depth)]
        stages.append(Stage(stage_name, groups))
    return Plan(catalogue, stages)


# --- renderers ---------------------------------------------------------------------------------
def plan_as_text(plan: Plan) -> str:
    """A readable plan: stages, groups, calibrations with expert, payloads, dependencies, validation."""
    lines = [f"Plan: {len(plan.order)} calibrations"
             + (f" from {plan.catalogue.directory}" if plan.catalogue.directory else "")]
    for number, stage in enumerate(plan.stages, 1):
        lines.append(f"stage {number}/{len(plan.stages)}: {stage.title}")
        if stage.name == CDST_PRODUCTION:
            lines.append("  reconstruct the raw data with the raw-stage payloads and write cDST files")
            continue
        if not stage.groups:
            lines.append("  (no calibrations)")
        for level, group in enumerate(stage.groups):
            lines.append(f"  group {level}: {', '.join(group)}")
            for name in group:
                info = plan.catalogue[name]
                s = info.settings
                details = [f"@{s.expert_username}"]
                if s.subsystem:
                    details.append(f"subsystem {s.subsystem}")
                details.append("input " + ", ".join(sorted(s.input_data_names)))
                if s.produced_payloads:
                    details.append("payloads " + ", ".join(s.produced_payloads))
                if info.depends_on:
                    details.append("after " + ", ".join(info.depends_on))
                details.append(f"validation {info.validation_path.name}" if info.validation_path
                               else "no validation")
                lines.append(f"    {name}: " + "; ".join(details))
    return "\n".join(lines) + "\n"

def plan_as_dot(plan: Plan) -> str:
    """The plan as a Graphviz digraph: one cluster per stage, dependency edges, and edges through
    the cDST production node."""

    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    production = "cDST production"
    lines = ["digraph b2luca_plan {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    for stage in plan.stages:
        if stage.name == CDST_PRODUCTION:
            lines.append(f"  {q(production)} [shape=box, style=filled, fillcolor=lightgrey];")
            continue
        lines.append(f"  subgraph {q('cluster_' + stage.name)} {{")
        lines.append(f"    label={q(stage.title)};")
        for level, group in enumerate(stage.groups):
            for name in group:
                expert = plan.catalogue[name].settings.expert_username
                label = q(f"{name}\n@{expert}\ngroup {level}")
                lines.append(f"    {q(name)} [label={label}];")
        lines.append("  }")
    for info in plan.catalogue:
        for dep in info.depends_on:
            lines.append(f"  {q(dep)} -> {q(info.name)};")
    for name in plan.stage(RAW).calibrations:
        lines.append(f"  {q(name)} -> {q(production)} [style=dashed];")
    for name in plan.stage(CDST).calibrations:
        lines.append(f"  {q(production)} -> {q(name)} [style=dashed];")
    lines.append("}")
    return "\n".join(lines) + "\n"
