"""The calibration catalogue: settings of prompt calibration scripts, their discovery and the plan.

Calibration scripts follow the basf2 ``prompt`` conventions: each declares, at module level,

    settings = CalibrationSettings(name=..., expert_username=..., subsystem=..., description=__doc__,
                                   input_data_formats=["raw"], input_data_names=[...],
                                   input_data_filters={...}, depends_on=[...], expert_config={...},
                                   produced_payloads=[...])

and a validation script in ``validations/`` declares ``settings = ValidationSettings(...)`` with the
name of the calibration it validates. Scripts written for basf2 (``from prompt import
CalibrationSettings``) and native ones (``from b2luca.catalogue import CalibrationSettings``) are both
read *statically* (see :mod:`b2luca.catalogue_ast`): nothing is imported, so basf2 need not exist.

:func:`discover` reads a directory into a :class:`Catalogue`; :func:`build_plan` orders it into stages
(raw calibrations, cDST production, cdst calibrations), each a list of groups = topological levels.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from b2luca.catalogue_ast import CatalogueError, DependencyRef, ParsedScript, read_script
from b2luca.paths import check_component

__all__ = [
    "ALLOWED_DATA_FORMATS", "INPUT_DATA_FILTERS", "CalibrationInfo", "CalibrationSettings", "Catalogue",
    "CatalogueError", "Plan", "Stage", "ValidationSettings", "build_plan", "discover", "split_filter",
    "RAW", "CDST_PRODUCTION", "CDST",
]

#: The input-data filters of basf2's prompt package: category -> {filter key: filter value}.
#: Keys and values coincide; scripts write ``INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]``.
INPUT_DATA_FILTERS: dict[str, dict[str, str]] = {
    category: {value: value for value in values}
    for category, values in {
        "Magnet": ("On", "Off", "Either"),
        "Beam Energy": ("No Beam", "4S", "Continuum", "", "Scan"),
        "Run Type": ("beam", "cosmic", "debug", "null", "physics"),
        "Data Tag": ("hlt_skim", "bhabha_all_calib", "cosmic_calib", "gamma_gamma_calib", "hadron_calib",
                     "btocharm_calib", "mumu_tight_or_highm_calib", "offip_calib", "radmumu_calib",
                     "random_calib", "single_gamma_mc"),
        "Data Quality Tag": (">=30 Minute Run", "Bad For Alignment", "Good", "Good Shifter", "Good For PXD",
                             "Good Or Recoverable", "Good Or Recoverable Shifter"),
    }.items()
}

#: Input data formats a calibration may read (basf2's ``CalibrationSettings.allowed_data_formats``).
ALLOWED_DATA_FORMATS = frozenset({"raw", "cdst", "mdst", "udst"})

RAW = "raw"
CDST_PRODUCTION = "cdst_production"
CDST = "cdst"
_STAGE_TITLES = {RAW: "raw calibrations", CDST_PRODUCTION: "cDST production", CDST: "cDST calibrations"}

_NOT = re.compile(r"^NOT\s+")
_PAYLOAD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _filter_categories() -> dict[str, str]:
    return {value: category for category, values in INPUT_DATA_FILTERS.items() for value in values}


def split_filter(text: str) -> tuple[bool, str, str]:
    """Split an input-data filter like ``"NOT Off"`` into ``(negated, category, value)``.

    Raises ValueError for a filter that is not one of INPUT_DATA_FILTERS.
    """
    if not isinstance(text, str):
        raise ValueError(f"input data filter {text!r} is not a string")
    negated = bool(_NOT.match(text))
    value = _NOT.sub("", text, count=1) if negated else text
    category = _filter_categories().get(value)
    if category is None:
        raise ValueError(f"unknown input data filter {text!r}; a filter is, after an optional 'NOT ', one of "
                         + "; ".join(f"{c}: {', '.join(map(repr, v))}" for c, v in INPUT_DATA_FILTERS.items()))
    return negated, category, value


def _string_collection(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"{what} must be a list of strings, got {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"{what} must contain non-empty strings only, got {bad!r}")
    return list(value)


def _json_config(value: Any, owner: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{owner}: expert_config must be a dict, got {type(value).__name__}")
    for key, item in value.items():
        try:
            json.dumps({key: item}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{owner}: expert_config[{key!r}] is not JSON-serialisable: {exc}") from None
        if not isinstance(key, str):
            raise ValueError(f"{owner}: expert_config keys must be strings, got {key!r}")
    return copy.deepcopy(value)


def _check_name(name: Any, cls: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{cls}: name must be a non-empty string, got {name!r}")
    if len(name) > 64:
        raise ValueError(f"{cls}(name={name!r}): name cannot be longer than 64 characters (has {len(name)})")
    check_component(name, f"{cls}(name=...)")  # the name becomes a directory: calibrations/<name>/, archive/.../<name>/


@dataclass(frozen=True, kw_only=True, eq=True)
class CalibrationSettings:
    """What a prompt calibration script declares about itself (basf2's ``prompt.CalibrationSettings``).

    Keyword arguments as in basf2. Checks (ValueError): name non-empty, at most 64 characters;
    input_data_formats a non-empty subset of raw/cdst/mdst/udst; input_data_names non-empty;
    input_data_filters keys equal to input_data_names and each filter, after an optional ``NOT ``,
    one of INPUT_DATA_FILTERS; expert_config a JSON-serialisable dict; depends_on a list of
    CalibrationSettings; produced_payloads payload names. ``input_data_formats`` and
    ``input_data_names`` become frozensets (as in basf2), filters tuples, lists tuples.
    """

    name: str
    expert_username: str
    description: str | None = ""
    subsystem: str = ""
    input_data_formats: frozenset[str] = frozenset()
    input_data_names: frozenset[str] = frozenset()
    input_data_filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    depends_on: tuple["CalibrationSettings", ...] = ()
    expert_config: dict[str, Any] = field(default_factory=dict)
    produced_payloads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.name, "CalibrationSettings")
        owner = f"CalibrationSettings(name={self.name!r})"
        put = object.__setattr__
        if not isinstance(self.expert_username, str) or not self.expert_username.strip():
            raise ValueError(f"{owner}: expert_username must be a non-empty string (the expert's GitLab "
                             f"user), got {self.expert_username!r}")
        if not isinstance(self.subsystem, str):
            raise ValueError(f"{owner}: subsystem must be a string, got {self.subsystem!r}")
        if self.description is None:
            put(self, "description", "")
        elif not isinstance(self.description, str):
            raise ValueError(f"{owner}: description must be a string, got {type(self.description).__name__}")

        if not self.input_data_formats:
            raise ValueError(f"{owner}: you must specify at least one input data format "
                             f"(one of {sorted(ALLOWED_DATA_FORMATS)})")
        formats = frozenset(f.lower() for f in _string_collection(self.input_data_formats,
                                                                 f"{owner}: input_data_formats"))
        unknown = formats - ALLOWED_DATA_FORMATS
        if unknown:
            raise ValueError(f"{owner}: input_data_formats has {sorted(unknown)}, not in the allowed "
                             f"formats {sorted(ALLOWED_DATA_FORMATS)}")
        put(self, "input_data_formats", formats)

        if not self.input_data_names:
            raise ValueError(f"{owner}: you must specify at least one input data name")
        names = frozenset(_string_collection(self.input_data_names, f"{owner}: input_data_names"))
        put(self, "input_data_names", names)

        filters = self.input_data_filters or {}
        if not isinstance(filters, Mapping):
            raise ValueError(f"{owner}: input_data_filters must be a dict {{input data name: [filters]}}, "
                             f"got {type(filters).__name__}")
        if filters and set(filters) != names:
            raise ValueError(f"{owner}: the input_data_filters keys {sorted(map(str, filters))} don't match the "
                             f"input_data_names {sorted(names)}")
        checked: dict[str, tuple[str, ...]] = {}
        for data_name, values in filters.items():
            what = f"{owner}: input_data_filters[{data_name!r}]"
            if isinstance(values, str) or not isinstance(values, (list, tuple, set, frozenset)):
                raise ValueError(f"{what} must be a list of filters, got {values!r}")
            for value in values:
                try:
                    split_filter(value)
                except ValueError as exc:
                    raise ValueError(f"{what}: {exc}") from None
            checked[data_name] = tuple(values)
        put(self, "input_data_filters", checked)

        deps = self.depends_on or ()
        if isinstance(deps, CalibrationSettings) or not isinstance(deps, (list, tuple)):
            raise ValueError(f"{owner}: depends_on must be a list of other calibrations' settings, got {deps!r}")
        for dep in deps:
            if not isinstance(dep, CalibrationSettings):
                raise ValueError(f"{owner}: depends_on must contain CalibrationSettings (another script's "
                                 f"'settings'), got {dep!r}")
        put(self, "depends_on", tuple(deps))

        put(self, "expert_config", _json_config(self.expert_config, owner))

        payloads = _string_collection(self.produced_payloads or [], f"{owner}: produced_payloads")
        bad = [p for p in payloads if not _PAYLOAD_NAME.match(p)]
        if bad:
            raise ValueError(f"{owner}: produced_payloads must be payload names (identifiers), got {bad!r}")
        put(self, "produced_payloads", tuple(payloads))

    def __hash__(self) -> int:
        return hash(("CalibrationSettings", self.name))

    @property
    def depends_on_names(self) -> tuple[str, ...]:
        """Names of the calibrations this one depends on."""
        return tuple(dep.name for dep in self.depends_on)

    @property
    def stage(self) -> str:
        """``"raw"`` if the calibration reads raw data, else ``"cdst"`` (cdst/mdst/udst)."""
        return RAW if RAW in self.input_data_formats else CDST

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (depends_on as names, sets sorted), like basf2's ``json_dumps``."""
        return {"name": self.name, "expert_username": self.expert_username, "subsystem": self.subsystem,
                "description": self.description,
                "input_data_formats": sorted(self.input_data_formats),
                "input_data_names": sorted(self.input_data_names),
                "input_data_filters": {k: list(v) for k, v in self.input_data_filters.items()},
                "depends_on": list(self.depends_on_names),
                "expert_config": copy.deepcopy(self.expert_config),
                "produced_payloads": list(self.produced_payloads)}

    def json_dumps(self) -> str:
        """The settings as a JSON string (basf2 API)."""
        return json.dumps(self.to_dict())


@dataclass(frozen=True, kw_only=True, eq=True)
class ValidationSettings:
    """What a validation script declares (basf2's ``prompt.ValidationSettings``); ``name`` is the
    name of the calibration it validates."""

    name: str
    description: str | None = ""
    download_files: tuple[str, ...] = ()
    expert_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.name, "ValidationSettings")
        owner = f"ValidationSettings(name={self.name!r})"
        if self.description is None:
            object.__setattr__(self, "description", "")
        elif not isinstance(self.description, str):
            raise ValueError(f"{owner}: description must be a string")
        files = _string_collection(self.download_files or [], f"{owner}: download_files")
        object.__setattr__(self, "download_files", tuple(files))
        object.__setattr__(self, "expert_config", _json_config(self.expert_config, owner))

    def __hash__(self) -> int:
        return hash(("ValidationSettings", self.name))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"name": self.name, "description": self.description,
                "download_files": list(self.download_files), "expert_config": copy.deepcopy(self.expert_config)}

    def json_dumps(self) -> str:
        """The settings as a JSON string (basf2 API)."""
        return json.dumps(self.to_dict())


# ------------------------------------------------------------------------------------------------
# Catalogue
# ------------------------------------------------------------------------------------------------
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
        _json_config(merged, f"{self.name} (merged expert_config)")
        return merged


class Catalogue:
    """Calibrations by name (``.calibrations``), in discovery order."""

    def __init__(self, calibrations: Iterable[CalibrationInfo], directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else None
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
        return Catalogue((info for n, info in self.calibrations.items() if n in chosen), self.directory)


def _find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Distinct cycles found by depth-first search, each as ``[a, b, ..., a]``."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for root in graph:
        if root in state:
            continue
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(graph.get(root, ())))]
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


def _settings_name(parsed: ParsedScript) -> str:
    name = parsed.kwargs.get("name")
    return name if isinstance(name, str) else parsed.stem


def _construct(cls: type, parsed: ParsedScript, kwargs: dict[str, Any]) -> Any:
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CatalogueError(f"{parsed.path}:{parsed.lineno}: invalid {cls.__name__}: {exc}") from None


def _dependency_stems(parsed: ParsedScript) -> list[DependencyRef]:
    deps = parsed.kwargs.get("depends_on")
    if deps is None:
        return []
    if not isinstance(deps, (list, tuple)):
        raise CatalogueError(f"{parsed.path}:{parsed.lineno}: depends_on must be a list of other calibrations' "
                             f"settings, got {deps!r}")
    for dep in deps:
        if not isinstance(dep, DependencyRef):
            raise CatalogueError(
                f"{parsed.path}:{parsed.lineno}: depends_on must list other calibrations' settings imported as "
                f"`from prompt.calibrations.<script> import settings as <alias>` (or from calibrations.<script>), "
                f"got {dep!r}")
    return list(deps)


def discover(directory: Path | str) -> Catalogue:
    """Read every calibration script ``directory/*.py`` (not ``_*``) and validation ``directory/validations/*.py``.

    Scripts are read statically, never imported. A ``depends_on`` entry names another script by its
    stem; it is resolved here. Raises :class:`CatalogueError` naming the script(s) for unreadable
    settings, invalid settings, a missing dependency script, a dependency cycle, a duplicate
    calibration name, and a validation that matches no calibration (or two validations for one).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CatalogueError(f"calibration directory {directory} does not exist or is not a directory")
    parsed: dict[str, ParsedScript] = {}
    skipped: dict[str, str] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        script = read_script(path, INPUT_DATA_FILTERS)
        if script.kind == "validation":
            raise CatalogueError(f"{path}:{script.lineno}: declares ValidationSettings; validation scripts "
                                 f"belong in {directory / 'validations'}")
        if script.kind is None:
            if "CalibrationSettings" in script.settings_classes:
                raise CatalogueError(f"{path}: imports CalibrationSettings but has no module-level "
                                     f"`settings = CalibrationSettings(...)`")
            skipped[path.stem] = "declares no `settings = CalibrationSettings(...)`"
            continue
        parsed[path.stem] = script

    # resolve dependencies by script stem
    problems = []
    graph: dict[str, list[str]] = {}
    for stem, script in parsed.items():
        graph[stem] = []
        for ref in _dependency_stems(script):
            if ref.stem in parsed:
                graph[stem].append(ref.stem)
                continue
            why = skipped.get(ref.stem, "does not exist")
            if ref.stem.startswith("_") and (directory / f"{ref.stem}.py").exists():
                why = "is private (name starts with '_') and is not read"
            problems.append(f"missing dependency: {script.path}:{ref.lineno} ({_settings_name(script)!r}) "
                            f"depends on `{ref.source}`, but {directory / (ref.stem + '.py')} {why}")
    if problems:
        raise CatalogueError("\n".join(problems))
    cycles = _find_cycles(graph)
    if cycles:
        raise CatalogueError("\n".join(
            "dependency cycle: " + " -> ".join(f"{_settings_name(parsed[s])} ({parsed[s].path})" for s in cycle)
            for cycle in cycles))

    # construct settings in dependency order
    built: dict[str, CalibrationSettings] = {}

    def build(stem: str) -> CalibrationSettings:
        if stem not in built:
            script = parsed[stem]
            kwargs = dict(script.kwargs)
            if "depends_on" in kwargs and kwargs["depends_on"] is not None:
                kwargs["depends_on"] = [build(ref.stem) for ref in _dependency_stems(script)]
            built[stem] = _construct(CalibrationSettings, script, kwargs)
        return built[stem]

    for stem in parsed:
        build(stem)

    # validations
    validations: dict[str, tuple[ParsedScript, ValidationSettings]] = {}
    names = {built[s].name: s for s in parsed}
    val_dir = directory / "validations"
    if val_dir.is_dir():
        for path in sorted(val_dir.glob("*.py")):
            if path.name.startswith("_"):
                continue
            script = read_script(path, INPUT_DATA_FILTERS)
            if script.kind == "calibration":
                raise CatalogueError(f"{path}:{script.lineno}: declares CalibrationSettings; calibration "
                                     f"scripts belong in {directory}")
            if script.kind is None:
                if "ValidationSettings" in script.settings_classes:
                    raise CatalogueError(f"{path}: imports ValidationSettings but has no module-level "
                                         f"`settings = ValidationSettings(...)`")
                continue
            vset = _construct(ValidationSettings, script, dict(script.kwargs))
            if vset.name not in names:
                raise CatalogueError(f"{path}:{script.lineno}: validation for {vset.name!r}, but no calibration "
                                     f"in {directory} has that name; known: {', '.join(sorted(names))}")
            if vset.name in validations:
                raise CatalogueError(f"two validations for {vset.name!r}: {validations[vset.name][0].path} "
                                     f"and {path}")
            validations[vset.name] = (script, vset)

    infos = []
    for stem, script in parsed.items():
        settings = built[stem]
        val = validations.get(settings.name)
        infos.append(CalibrationInfo(settings=settings, script_path=script.path,
                                     validation_path=val[0].path if val else None,
                                     validation=val[1] if val else None,
                                     functions=script.functions,
                                     validation_functions=val[0].functions if val else frozenset()))
    return Catalogue(infos, directory)


# ------------------------------------------------------------------------------------------------
# Plan
# ------------------------------------------------------------------------------------------------
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
        """A readable plan: stages, groups, calibrations with expert, payloads, dependencies, validation."""
        lines = [f"Plan: {len(self.order)} calibrations"
                 + (f" from {self.catalogue.directory}" if self.catalogue.directory else "")]
        for number, stage in enumerate(self.stages, 1):
            lines.append(f"stage {number}/{len(self.stages)}: {stage.title}")
            if stage.name == CDST_PRODUCTION:
                lines.append("  reconstruct the raw data with the raw-stage payloads and write cDST files")
                continue
            if not stage.groups:
                lines.append("  (no calibrations)")
            for level, group in enumerate(stage.groups):
                lines.append(f"  group {level}: {', '.join(group)}")
                for name in group:
                    info = self.catalogue[name]
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

    def as_dot(self) -> str:
        """The plan as a Graphviz digraph: one cluster per stage, dependency edges, and edges through
        the cDST production node."""

        def q(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

        production = "cDST production"
        lines = ["digraph b2luca_plan {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
        for stage in self.stages:
            if stage.name == CDST_PRODUCTION:
                lines.append(f"  {q(production)} [shape=box, style=filled, fillcolor=lightgrey];")
                continue
            lines.append(f"  subgraph {q('cluster_' + stage.name)} {{")
            lines.append(f"    label={q(stage.title)};")
            for level, group in enumerate(stage.groups):
                for name in group:
                    expert = self.catalogue[name].settings.expert_username
                    label = q(f"{name}\n@{expert}\ngroup {level}")
                    lines.append(f"    {q(name)} [label={label}];")
            lines.append("  }")
        for info in self.catalogue:
            for dep in info.depends_on:
                lines.append(f"  {q(dep)} -> {q(info.name)};")
        for name in self.stage(RAW).calibrations:
            lines.append(f"  {q(name)} -> {q(production)} [style=dashed];")
        for name in self.stage(CDST).calibrations:
            lines.append(f"  {q(production)} -> {q(name)} [style=dashed];")
        lines.append("}")
        return "\n".join(lines) + "\n"


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
    for cycle in _find_cycles(graph):
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
