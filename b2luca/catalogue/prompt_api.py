"""basf2's ``prompt`` API as b2luca speaks it: ``INPUT_DATA_FILTERS``, ``CalibrationSettings``, ``ValidationSettings``.

When basf2 is installed (``import prompt`` gives basf2's package) the filter vocabulary and the subsystem
list are taken from it; otherwise a built-in copy of the current basf2 release is used. A bucket YAML may
extend the vocabulary for a newer release (``calibrations.extra_input_data_filters``), see
:class:`FilterVocabulary` and :func:`using_vocabulary`.

The checks are basf2's, no stricter and no looser: name at most 64 characters; ``subsystem`` and
``description`` given, ``subsystem`` one of basf2's; input_data_formats a non-empty subset of
raw/cdst/mdst/udst (lower-cased); input_data_names non-empty; filter keys equal to the names; each filter,
after removing its first ``NOT`` and leading blanks, a value of the vocabulary; expert_config a
JSON-serialisable dict; depends_on other scripts' settings. Payload names are not checked by basf2
(``SVDGlobalXMLFile.xml`` is fine); b2luca only needs them to be non-empty strings.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .. import enums
from ..paths import check_component

__all__ = [
    "ALLOWED_DATA_FORMATS", "BUILTIN_INPUT_DATA_FILTERS", "BUILTIN_SUBSYSTEMS", "INPUT_DATA_FILTERS", "SUBSYSTEMS",
    "CalibrationSettings", "FilterVocabulary", "ValidationSettings", "basf2_prompt", "split_filter",
    "using_vocabulary", "RAW", "CDST",
]

RAW, CDST = enums.Stage.RAW, enums.Stage.CDST

#: The input-data filters of the current basf2 release (category -> {key: value}; keys and values coincide).
#: Since older releases: ``hlt_skim`` removed, ``delayedbhabha_calib`` added.
BUILTIN_INPUT_DATA_FILTERS: dict[str, dict[str, str]] = {
    category: {value: value for value in values}
    for category, values in {
        "Magnet": ("On", "Off", "Either"),
        "Beam Energy": ("No Beam", "4S", "Continuum", "", "Scan"),
        "Run Type": ("beam", "cosmic", "debug", "null", "physics"),
        "Data Tag": ("bhabha_all_calib", "cosmic_calib", "delayedbhabha_calib", "gamma_gamma_calib",
                     "hadron_calib", "btocharm_calib", "mumu_tight_or_highm_calib", "offip_calib",
                     "radmumu_calib", "random_calib", "single_gamma_mc"),
        "Data Quality Tag": (">=30 Minute Run", "Bad For Alignment", "Good", "Good Shifter", "Good For PXD",
                             "Good Or Recoverable", "Good Or Recoverable Shifter"),
    }.items()
}

#: basf2's subsystems (``CalibrationSettings.subsystem`` must be one of them).
BUILTIN_SUBSYSTEMS = frozenset({"pxd", "svd", "cdc", "ecl", "top", "arich", "klm", "trigger", "tracking",
                                "alignment", "beam", "example"})

#: Input data formats a calibration may read (basf2's ``CalibrationSettings.allowed_data_formats``).
ALLOWED_DATA_FORMATS = frozenset({"raw", "cdst", "mdst", "udst"})


def basf2_prompt() -> ModuleType | None:
    """basf2's ``prompt`` package when basf2 is installed (an unrelated package named ``prompt`` is ignored)."""
    try:
        module = importlib.import_module("prompt")
    except (Exception, SystemExit):  # ImportError, or basf2 failing to start: behave as without basf2
        return None
    if not isinstance(getattr(module, "INPUT_DATA_FILTERS", None), Mapping) \
            or not hasattr(module, "CalibrationSettings"):
        return None
    return module


def _installed_filters() -> dict[str, dict[str, str]]:
    module = basf2_prompt()
    if module is None:
        return copy.deepcopy(BUILTIN_INPUT_DATA_FILTERS)
    return {str(c): {str(k): str(v) for k, v in values.items()} for c, values in module.INPUT_DATA_FILTERS.items()}


def _installed_subsystems() -> frozenset[str]:
    module = basf2_prompt()
    if module is not None:
        for holder in (module.CalibrationSettings, module):
            found = getattr(holder, "allowed_subsystems", None)
            if found:
                return frozenset(str(s) for s in found)
    return BUILTIN_SUBSYSTEMS


#: The vocabulary in force: basf2's when installed, else the built-in copy.
INPUT_DATA_FILTERS: dict[str, dict[str, str]] = _installed_filters()
SUBSYSTEMS: frozenset[str] = _installed_subsystems()


@dataclass(frozen=True)
class FilterVocabulary:
    """Filter categories and their values: basf2's, optionally extended by the bucket YAML."""

    filters: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: INPUT_DATA_FILTERS)

    def extended(self, extra: Mapping[str, Sequence[str]] | None) -> "FilterVocabulary":
        """This vocabulary plus ``{category: [values]}`` (a new category is allowed)."""
        if not extra:
            return self
        merged = {c: dict(v) for c, v in self.filters.items()}
        for category, values in extra.items():
            merged.setdefault(category, {}).update({v: v for v in values})
        return FilterVocabulary(merged)

    def category_of(self, value: str) -> str | None:
        """The category of a filter value, or None when unknown."""
        for category, values in self.filters.items():
            if value in values.values():
                return category
        return None

    def describe(self) -> str:
        """All values by category, for messages."""
        return "; ".join(f"{c}: {', '.join(map(repr, v.values()))}" for c, v in self.filters.items())


_VOCABULARY: contextvars.ContextVar[FilterVocabulary | None] = contextvars.ContextVar("b2luca_vocabulary",
                                                                                      default=None)


def current_vocabulary() -> FilterVocabulary:
    """The vocabulary CalibrationSettings checks against now."""
    return _VOCABULARY.get() or FilterVocabulary()


@contextlib.contextmanager
def using_vocabulary(vocabulary: FilterVocabulary) -> Iterator[FilterVocabulary]:
    """Check settings built inside the ``with`` block against ``vocabulary``."""
    token = _VOCABULARY.set(vocabulary)
    try:
        yield vocabulary
    finally:
        _VOCABULARY.reset(token)


def strip_not(text: str) -> str:
    """basf2's rule: remove the first ``NOT`` of a filter, then leading blanks."""
    return text.replace("NOT", "", 1).lstrip()


def split_filter(text: str, vocabulary: FilterVocabulary | None = None) -> tuple[bool, str, str]:
    """Split an input-data filter like ``"NOT Off"`` into ``(negated, category, value)``.

    Raises ValueError for a filter that is not, after basf2's ``NOT`` rule, a value of the vocabulary.
    """
    if not isinstance(text, str):
        raise ValueError(f"input data filter {text!r} is not a string")
    vocabulary = vocabulary or current_vocabulary()
    value = strip_not(text)
    category = vocabulary.category_of(value)
    if category is None:
        raise ValueError(f"unknown input data filter {text!r}; a filter is, after an optional 'NOT ', one of "
                         + vocabulary.describe())
    return "NOT" in text, category, value


def _string_collection(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"{what} must be a list of strings, got {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"{what} must contain non-empty strings only, got {bad!r}")
    return list(value)


def json_config(value: Any, owner: str) -> dict[str, Any]:
    """A deep copy of an expert_config after checking it is a JSON-serialisable dict with string keys."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{owner}: expert_config must be a dict, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"{owner}: expert_config keys must be strings, got {key!r}")
        try:
            json.dumps({key: item}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{owner}: expert_config[{key!r}] is not JSON-serialisable: {exc}") from None
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

    Keyword arguments as in basf2; ``subsystem`` and ``description`` are required (``description=__doc__``
    may be None, as in basf2). ValueError for anything basf2 refuses (see the module docstring).
    ``input_data_formats`` and ``input_data_names`` become frozensets, filters and lists tuples.
    """

    name: str
    expert_username: str
    subsystem: str
    description: str | None
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
        if self.subsystem not in SUBSYSTEMS:
            raise ValueError(f"{owner}: subsystem {self.subsystem!r} is not one of basf2's subsystems "
                             f"({', '.join(sorted(SUBSYSTEMS))})")
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
        put(self, "input_data_filters", self._checked_filters(owner, names))

        deps = self.depends_on or ()
        if isinstance(deps, CalibrationSettings) or not isinstance(deps, (list, tuple)):
            raise ValueError(f"{owner}: depends_on must be a list of other calibrations' settings, got {deps!r}")
        for dep in deps:
            if not isinstance(dep, CalibrationSettings):
                raise ValueError(f"{owner}: depends_on must contain CalibrationSettings (another script's "
                                 f"'settings'), got {dep!r}")
        put(self, "depends_on", tuple(deps))
        put(self, "expert_config", json_config(self.expert_config, owner))
        put(self, "produced_payloads",
            tuple(_string_collection(self.produced_payloads or [], f"{owner}: produced_payloads")))

    def _checked_filters(self, owner: str, names: frozenset[str]) -> dict[str, tuple[str, ...]]:
        filters = self.input_data_filters or {}
        if not isinstance(filters, Mapping):
            raise ValueError(f"{owner}: input_data_filters must be a dict {{input data name: [filters]}}, "
                             f"got {type(filters).__name__}")
        if filters and set(filters) != names:
            raise ValueError(f"{owner}: the input_data_filters keys {sorted(map(str, filters))} don't match the "
                             f"input_data_names {sorted(names)}")
        vocabulary = current_vocabulary()
        checked: dict[str, tuple[str, ...]] = {}
        for data_name, values in filters.items():
            what = f"{owner}: input_data_filters[{data_name!r}]"
            if isinstance(values, str) or not isinstance(values, (list, tuple, set, frozenset)):
                raise ValueError(f"{what} must be a list of filters, got {values!r}")
            for value in values:
                try:
                    split_filter(value, vocabulary)
                except ValueError as exc:
                    raise ValueError(f"{what}: {exc}") from None
            checked[data_name] = tuple(values)
        return checked

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
        object.__setattr__(self, "expert_config", json_config(self.expert_config, owner))

    def __hash__(self) -> int:
        return hash(("ValidationSettings", self.name))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"name": self.name, "description": self.description,
                "download_files": list(self.download_files), "expert_config": copy.deepcopy(self.expert_config)}

    def json_dumps(self) -> str:
        """The settings as a JSON string (basf2 API)."""
        return json.dumps(self.to_dict())
