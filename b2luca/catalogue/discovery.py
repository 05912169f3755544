"""Discovery: read a directory of calibration scripts (and ``validations/``) into a :class:`Catalogue`.

Scripts are read statically (:mod:`b2luca.catalogue.reader`), never imported. Every problem of the
directory is collected and reported together in one :class:`CatalogueError` (one line each, naming
file:line), so a user fixes them all in one go. A script that declares no settings is skipped and listed
in :attr:`Catalogue.skipped`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CatalogueError
from .prompt_api import CalibrationSettings, FilterVocabulary, ValidationSettings, using_vocabulary
from .reader import DependencyRef, ParsedScript, read_script
from .records import CalibrationInfo, Catalogue, SkippedScript, find_cycles

__all__ = ["discover"]


@dataclass(frozen=True)
class _Validation:
    script: ParsedScript
    settings: ValidationSettings


class _Problems:
    """Collects one line per problem; raises them all at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        if line not in self.lines:
            self.lines.append(line)

    def raise_if_any(self, directory: Path) -> None:
        if self.lines:
            raise CatalogueError("\n".join(self.lines))


def _settings_name(parsed: ParsedScript) -> str:
    name = parsed.kwargs.get("name")
    return name if isinstance(name, str) else parsed.stem


def _dependency_refs(parsed: ParsedScript) -> tuple[list[DependencyRef], str | None]:
    """The script's ``depends_on`` entries, or a problem text."""
    deps = parsed.kwargs.get("depends_on")
    if deps is None:
        return [], None
    if not isinstance(deps, (list, tuple)):
        return [], (f"{parsed.path}:{parsed.lineno}: depends_on must be a list of other calibrations' settings, "
                    f"got {deps!r}")
    for dep in deps:
        if not isinstance(dep, DependencyRef):
            return [], (f"{parsed.path}:{parsed.lineno}: depends_on must list other calibrations' settings "
                        f"imported as `from prompt.calibrations.<script> import settings as <alias>` (or from "
                        f"calibrations.<script>), got {dep!r}")
    return list(deps), None


def _read_all(paths: list[Path], vocabulary: FilterVocabulary, problems: _Problems) -> dict[Path, ParsedScript]:
    scripts = {}
    for path in paths:
        try:
            scripts[path] = read_script(path, vocabulary.filters)
        except CatalogueError as exc:
            problems.add(str(exc))
    return scripts


def _script_paths(directory: Path) -> list[Path]:
    return [p for p in sorted(directory.glob("*.py")) if not p.name.startswith("_")]


def discover(directory: Path | str, extra_input_data_filters: Mapping[str, Sequence[str]] | None = None,
             vocabulary: FilterVocabulary | None = None) -> Catalogue:
    """Read every calibration script ``directory/*.py`` (not ``_*``) and validation ``directory/validations/*.py``.

    ``extra_input_data_filters`` (``{category: [values]}``) extends the filter vocabulary (basf2's, or
    ``vocabulary``). Raises :class:`CatalogueError` listing every problem: unreadable or invalid settings,
    missing dependency scripts, dependency cycles (with the import lines), duplicate names, validations
    that match no calibration or two validations for one.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CatalogueError(f"calibration directory {directory} does not exist or is not a directory")
    vocabulary = (vocabulary or FilterVocabulary()).extended(extra_input_data_filters)
    problems = _Problems()
    parsed: dict[str, ParsedScript] = {}
    broken: set[str] = set()  # stems whose own problems are reported; their dependents are not blamed
    skipped: list[SkippedScript] = []
    paths = _script_paths(directory)
    read = _read_all(paths, vocabulary, problems)
    for path in paths:
        script = read.get(path)
        if script is None:
            broken.add(path.stem)
        elif script.kind == "validation":
            problems.add(f"{path}:{script.lineno}: declares ValidationSettings; validation scripts belong in "
                         f"{directory / 'validations'}")
            broken.add(path.stem)
        elif script.kind is None:
            if "CalibrationSettings" in script.settings_classes:
                problems.add(f"{path}: imports CalibrationSettings but has no module-level "
                             f"`settings = CalibrationSettings(...)`")
                broken.add(path.stem)
            else:
                skipped.append(SkippedScript(path, "declares no `settings = CalibrationSettings(...)`"))
        else:
            parsed[path.stem] = script

    graph = _dependency_graph(directory, parsed, broken, skipped, problems)
    for cycle in find_cycles(graph):
        steps = []
        for stem, nxt in zip(cycle, cycle[1:]):
            line = next((r.lineno for r in _dependency_refs(parsed[stem])[0] if r.stem == nxt), parsed[stem].lineno)
            steps.append(f"{_settings_name(parsed[stem])} ({parsed[stem].path}:{line})")
        steps.append(_settings_name(parsed[cycle[-1]]))
        problems.add("dependency cycle: " + " -> ".join(steps))
        broken.update(cycle)

    built = _build_settings(parsed, graph, broken, vocabulary, problems)
    names: dict[str, str] = {}
    for stem, settings in built.items():
        if settings.name in names:
            problems.add(f"duplicate calibration name {settings.name!r}: {parsed[names[settings.name]].path}:"
                         f"{parsed[names[settings.name]].lineno} and {parsed[stem].path}:{parsed[stem].lineno}")
        else:
            names[settings.name] = stem
    validations = _validations(directory, vocabulary, set(names) | {_settings_name(parsed[s]) for s in broken
                                                                  if s in parsed}, problems)
    problems.raise_if_any(directory)

    infos = []
    for stem, script in parsed.items():
        settings = built[stem]
        val = validations.get(settings.name)
        infos.append(CalibrationInfo(settings=settings, script_path=script.path,
                                     validation_path=val.script.path if val else None,
                                     validation=val.settings if val else None,
                                     functions=script.functions,
                                     validation_functions=val.script.functions if val else frozenset()))
    return Catalogue(infos, directory, skipped)


def _dependency_graph(directory: Path, parsed: dict[str, ParsedScript], broken: set[str],
                      skipped: list[SkippedScript], problems: _Problems) -> dict[str, list[str]]:
    """``{stem: [dependency stems]}``; missing dependency scripts are problems."""
    skipped_stems = {s.path.stem: s.reason for s in skipped}
    graph: dict[str, list[str]] = {}
    for stem, script in parsed.items():
        refs, problem = _dependency_refs(script)
        if problem:
            problems.add(problem)
            broken.add(stem)
        graph[stem] = []
        for ref in refs:
            if ref.stem in parsed:
                graph[stem].append(ref.stem)
                continue
            if ref.stem in broken:  # that script's own problem is reported already
                broken.add(stem)
                continue
            why = skipped_stems.get(ref.stem, "does not exist")
            if ref.stem.startswith("_") and (directory / f"{ref.stem}.py").exists():
                why = "is private (name starts with '_') and is not read"
            problems.add(f"{script.path}:{ref.lineno}: missing dependency: {_settings_name(script)!r} depends on "
                         f"`{ref.source}`, but {directory / (ref.stem + '.py')} {why}")
            broken.add(stem)
    return graph


def _build_settings(parsed: dict[str, ParsedScript], graph: dict[str, list[str]], broken: set[str],
                    vocabulary: FilterVocabulary, problems: _Problems) -> dict[str, CalibrationSettings]:
    """CalibrationSettings of every script, built in dependency order; scripts whose dependencies failed are
    left out (and marked broken) without a second message."""
    built: dict[str, CalibrationSettings] = {}

    def build(stem: str) -> CalibrationSettings | None:
        if stem in built:
            return built[stem]
        if stem in broken:
            return None
        deps = [build(dep) for dep in graph[stem]]
        if any(dep is None for dep in deps):
            broken.add(stem)
            return None
        script = parsed[stem]
        kwargs: dict[str, Any] = dict(script.kwargs)
        if kwargs.get("depends_on") is not None:
            kwargs["depends_on"] = deps
        try:
            with using_vocabulary(vocabulary):
                built[stem] = CalibrationSettings(**kwargs)
        except (TypeError, ValueError) as exc:
            problems.add(f"{script.path}:{script.lineno}: invalid CalibrationSettings: {exc}")
            broken.add(stem)
            return None
        return built[stem]

    for stem in parsed:
        build(stem)
    return built


def _validations(directory: Path, vocabulary: FilterVocabulary, names: set[str],
                 problems: _Problems) -> dict[str, _Validation]:
    found: dict[str, _Validation] = {}
    val_dir = directory / "validations"
    if not val_dir.is_dir():
        return found
    paths = _script_paths(val_dir)
    for path, script in _read_all(paths, vocabulary, problems).items():
        if script.kind == "calibration":
            problems.add(f"{path}:{script.lineno}: declares CalibrationSettings; calibration scripts belong in "
                         f"{directory}")
            continue
        if script.kind is None:
            if "ValidationSettings" in script.settings_classes:
                problems.add(f"{path}: imports ValidationSettings but has no module-level "
                             f"`settings = ValidationSettings(...)`")
            continue
        try:
            settings = ValidationSettings(**script.kwargs)
        except (TypeError, ValueError) as exc:
            problems.add(f"{path}:{script.lineno}: invalid ValidationSettings: {exc}")
            continue
        if settings.name not in names:
            problems.add(f"{path}:{script.lineno}: validation for {settings.name!r}, but no calibration in "
                         f"{directory} has that name; known: {', '.join(sorted(names))}")
        elif settings.name in found:
            problems.add(f"two validations for {settings.name!r}: {found[settings.name].script.path} and {path}")
        else:
            found[settings.name] = _Validation(script, settings)
    return found
