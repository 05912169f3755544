"""Bucket configuration: a YAML file validated against the JSON Schema shipped in the package.

``load_config(path)`` reads the YAML, validates it against ``b2luca/schemas/bucket-<version>.json``
and returns a typed :class:`BucketConfig`.  Every mistake is reported as one :class:`ConfigError`
naming the file, the key path and what was expected.  Relative paths are taken relative to the
directory of the YAML file, so a bucket behaves the same from any working directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from .enums import (BatchSystem, ConditionsBackend, DataSource, OnValidationFailure, PXDBackground, RunDBSource,
                    RunnerType, Transport)
from .errors import ConfigError
from .config_checks import non_finite_problems, parse_config_yaml, raise_problems, read_config_text
from .iov import IoV

SCHEMA_VERSION = 1
TOKEN_KEYS = {"token", "private_token", "oauth_token", "job_token", "api_key", "password"}


# --- typed configuration --------------------------------------------------------------------------
def _coerce(section: Any, key: str, choice: type) -> None:
    """Turn a choice given as its word (YAML, tests) into its enum member, on a frozen dataclass."""
    object.__setattr__(section, key, choice(getattr(section, key)))


@dataclass(frozen=True)
class BucketSection:
    name: str
    experiment: int
    first_run: int
    last_run: int


@dataclass(frozen=True)
class SettingsRepoConfig:
    url: str
    branch: str | None = None


@dataclass(frozen=True)
class RunDBConfig:
    snapshot: Path
    source: RunDBSource = RunDBSource.SYNTHETIC
    url: str | None = None
    api_key_env: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        _coerce(self, "source", RunDBSource)


@dataclass(frozen=True)
class DataConfig:
    raw_directory: Path
    cdst_directory: Path
    source: DataSource = DataSource.SYNTHETIC
    #: raw data (MB) one cDST production task (one batch job) reconstructs: consecutive runs are grouped
    #: until they reach it (0: one task per run)
    production_task_mb: float = 8.0

    def __post_init__(self) -> None:
        _coerce(self, "source", DataSource)


@dataclass(frozen=True)
class SimulationConfig:
    seed: int
    events: dict[str, int]
    files_per_run: int = 1
    #: PXD beam background overlaid on tracking samples (issue 16)
    pxd_background: PXDBackground = PXDBackground.NONE
    pxd_background_payload: Path | None = None  # the PXDBackgroundGAN payload file (mode gan)
    weak_modes: dict[str, float] = field(default_factory=dict)  # {mode: amplitude} added to the truth
    #: parts moved between runs: ({"part", "from_run", "shift_um": [x, y, z]}, ...) (b2luca.sim.truth.parse_movements)
    movements: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        _coerce(self, "pxd_background", PXDBackground)


@dataclass(frozen=True)
class CentralConditionsConfig:
    """``conditions.central``: the Belle II conditions-DB REST service (token from a file or env var)."""

    url: str
    token_env: str | None = None
    token_file: Path | None = None
    timeout: float = 30.0
    retries: int = 3


@dataclass(frozen=True)
class ConditionsConfig:
    directory: Path
    database_chain: tuple[str, ...]
    prompt_global_tag: str
    reference_global_tag: str | None = None
    backend: ConditionsBackend = ConditionsBackend.LOCAL
    central: CentralConditionsConfig | None = None

    def __post_init__(self) -> None:
        _coerce(self, "backend", ConditionsBackend)


@dataclass(frozen=True)
class CalibrationsConfig:
    directory: Path
    select: tuple[str, ...] = ()
    expert_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_validation_failure: OnValidationFailure = OnValidationFailure.STOP
    upload: dict[str, dict[str, Any]] = field(default_factory=dict)  # update/veto rules: default + per name
    extra_input_data_filters: dict[str, tuple[str, ...]] = field(default_factory=dict)  # {category: [values]}
    subsystem_responsibles: dict[str, str] = field(default_factory=dict)  # {subsystem: GitLab username}

    def __post_init__(self) -> None:
        _coerce(self, "on_validation_failure", OnValidationFailure)
        object.__setattr__(self, "extra_input_data_filters",
                           {k: tuple(v) for k, v in self.extra_input_data_filters.items()})
        object.__setattr__(self, "subsystem_responsibles", dict(self.subsystem_responsibles))


@dataclass(frozen=True)
class Basf2RunnerConfig:
    """``runner.basf2``: the basf2 environment and what b2caf-prompt-run / b2val-prompt-run get."""

    setup: str = ""  # shell text run through ``bash -c`` first, e.g. "source b2setup release-09-00-00"
    heartbeat: int = 60
    validation_command: str = "b2val-prompt-run"
    backend_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # {calibration: {CAF backend arg: value}}

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend_args", {n: dict(a) for n, a in self.backend_args.items()})


@dataclass(frozen=True)
class RunnerConfig:
    type: RunnerType = RunnerType.NATIVE
    backend: str = "Local"
    command: str = "b2caf-prompt-run"
    timeout_min: float | None = None
    basf2: Basf2RunnerConfig = Basf2RunnerConfig()

    def __post_init__(self) -> None:
        _coerce(self, "type", RunnerType)
        if isinstance(self.basf2, Mapping):  # the YAML's runner.basf2 mapping
            object.__setattr__(self, "basf2", Basf2RunnerConfig(**self.basf2))


@dataclass(frozen=True)
class GitLabConfig:
    """``report.gitlab``: where issues go and how the token is found (never the token itself)."""

    url: str | None  # None only when config_section's python-gitlab config names it
    project: str | int
    token_env: str | None = None
    config_section: str | None = None
    config_file: str | None = None
    timeout: float = 30.0
    ssl_verify: bool = True
    max_retries: int = 2  # transient HTTP errors, per request
    max_retry_after: float = 60.0  # longest Retry-After (s) slept through inside one delivery
    rate_limit_retries: int = 3  # 429 answers in a row before the delivery gives up for now


@dataclass(frozen=True)
class ReportConfig:
    """``report``: the transport of report events (the local Markdown files are always written)."""

    transport: Transport = Transport.LOCAL
    gitlab: GitLabConfig | None = None

    def __post_init__(self) -> None:
        _coerce(self, "transport", Transport)


@dataclass(frozen=True)
class ArchiveConfig:
    directory: Path
    max_file_size_mb: float = 5.0


@dataclass(frozen=True)
class Resources:
    cpus: int = 1
    memory_mb: int = 2000
    walltime_min: int = 60
    queue: str | None = None


@dataclass(frozen=True)
class BatchConfig:
    system: BatchSystem = BatchSystem.LOCAL
    workers: int = 1
    default_resources: Resources = Resources()
    per_task: dict[str, Resources] = field(default_factory=dict)
    # batch clusters (issue 13): retries after a failed job, b2luigi's job-status cache, progress lines
    retries: int = 1
    status_cache_ttl: float = 2.0
    progress_interval: float = 10.0

    def __post_init__(self) -> None:
        _coerce(self, "system", BatchSystem)

    def resources_for(self, task_name: str) -> Resources:
        """Resources of one task: its own entry or the default."""
        return self.per_task.get(task_name, self.default_resources)


@dataclass(frozen=True)
class BucketConfig:
    """A whole bucket configuration, with all paths absolute."""

    path: Path
    bucket: BucketSection
    work_dir: Path
    settings_repository: SettingsRepoConfig | None
    rundb: RunDBConfig
    data: DataConfig
    simulation: SimulationConfig | None
    conditions: ConditionsConfig
    local_calibrations: dict[str, dict[str, tuple[str, ...]]]
    calibrations: CalibrationsConfig
    runner: RunnerConfig
    report: ReportConfig
    archive: ArchiveConfig
    batch: BatchConfig

    @property
    def name(self) -> str:
        return self.bucket.name

    @property
    def requested_iov(self) -> IoV:
        """The bucket's run range as an IoV (first to last run of the experiment)."""
        b = self.bucket
        return IoV(b.experiment, b.first_run, b.experiment, b.last_run)

    @property
    def prompt_iov(self) -> IoV:
        """The IoV of prompt payloads: open-ended from the bucket's first run."""
        return IoV(self.bucket.experiment, self.bucket.first_run, -1, -1)


# --- loading --------------------------------------------------------------------------------------
def load_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema of bucket files, shipped inside the package."""
    text = resources.files("b2luca").joinpath("schemas", f"bucket-{version}.json").read_text()
    return json.loads(text)


def _key_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: jsonschema.ValidationError) -> tuple[str, str]:
    """(key path, what was expected) for one schema error, phrased for a person."""
    where = list(error.absolute_path)
    validator, expected = error.validator, error.validator_value
    instance = error.instance
    if validator == "required":
        missing = [k for k in expected if isinstance(instance, dict) and k not in instance]
        return _key_path(where + missing[:1]), "is required but missing"
    if validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = [k for k in instance if k not in allowed]
        key = extra[0] if extra else "?"
        if key in TOKEN_KEYS:
            return _key_path(where + [key]), ("secrets never go in the YAML: name an environment variable "
                                              "(token_env) or a python-gitlab config section (config_section)")
        return _key_path(where + [key]), f"is not a known key here; expected one of: {', '.join(allowed)}"
    if "propertyNames" in error.schema_path and validator == "enum":
        return _key_path(where + [instance]), f"is not an allowed key; expected one of: {', '.join(expected)}"
    if validator == "enum":
        return _key_path(where), f"must be one of {', '.join(map(repr, expected))}, got {instance!r}"
    if validator == "const":
        return _key_path(where), f"must be {expected!r}, got {instance!r}"
    if validator == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        return _key_path(where), f"must be of type {' or '.join(kinds)}, got {type(instance).__name__} {instance!r}"
    if validator in {"minimum", "exclusiveMinimum", "maximum"}:
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<="}[validator]
        return _key_path(where), f"must be {op} {expected}, got {instance!r}"
    if validator == "pattern":
        return _key_path(where), f"must match {expected!r}, got {instance!r}"
    if validator in {"minItems", "minProperties", "minLength"}:
        return _key_path(where), f"must not be empty ({error.message})"
    return _key_path(where), error.message


def validate_document(document: Any, source: "str | Path") -> None:
    """Validate a parsed bucket document; raise one ConfigError listing every mistake (one line per key)."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping of keys, got {type(document).__name__}")
    version = document.get("schema_version", SCHEMA_VERSION)
    try:
        schema = load_schema(version if isinstance(version, int) else SCHEMA_VERSION)
    except FileNotFoundError:
        raise ConfigError(f"{source}: schema_version: must be {SCHEMA_VERSION}, got {version!r}") from None
    validator = jsonschema.Draft202012Validator(schema)
    by_path: dict[tuple, list[jsonschema.ValidationError]] = {}
    for error in validator.iter_errors(document):  # every problem of the file, one line per key path
        by_path.setdefault(tuple(map(str, error.absolute_path)), []).append(error)
    problems = [f"{source}: {': '.join(_describe(jsonschema.exceptions.best_match(errs)))}"
                for errs in by_path.values()]
    problems += non_finite_problems(document, source)
    raise_problems(problems)


def config_problems(cfg: BucketConfig) -> list[str]:
    """The cross-field rules the schema cannot express, checked on the typed config: one line per problem."""
    problems: list[str] = []
    b = cfg.bucket
    if b.last_run < b.first_run:
        problems.append(f"bucket.last_run: must be >= bucket.first_run ({b.first_run}), got {b.last_run}")
    if cfg.rundb.source == RunDBSource.REST:
        problems += [f"rundb.{key}: is required when rundb.source is 'rest'"
                     for key in ("url", "api_key_env") if getattr(cfg.rundb, key) is None]
    if cfg.data.source == DataSource.SYNTHETIC and cfg.simulation is None:
        problems.append("simulation: is required when data.source is 'synthetic' (the default)")
    if cfg.simulation is not None and cfg.simulation.pxd_background == PXDBackground.GAN and cfg.simulation.pxd_background_payload is None:
        problems.append("simulation.pxd_background_payload: is required when simulation.pxd_background is 'gan' "
                        "(a PXDBackgroundGAN payload file)")
    for i, m in enumerate(cfg.simulation.movements if cfg.simulation else ()):
        if m["part"] == "CDC" and m["shift_um"][2] != 0:
            problems.append(f"simulation.movements[{i}].shift_um: the CDC layers have no z parameter; z must be 0")
        if not b.first_run < m["from_run"] <= b.last_run:
            problems.append(f"simulation.movements[{i}].from_run: must be a run of the bucket after its first run "
                            f"({b.first_run + 1}..{b.last_run}), got {m['from_run']}")
    if cfg.report.transport == Transport.GITLAB:
        gitlab = cfg.report.gitlab
        if gitlab is None:
            problems.append("report.gitlab: is required when report.transport is 'gitlab'")
        elif gitlab.token_env is None and gitlab.config_section is None:
            problems.append("report.gitlab: needs token_env (an environment variable holding the token) or "
                            "config_section (a section of ~/.python-gitlab.cfg)")
    if cfg.conditions.backend == ConditionsBackend.CENTRAL:
        central = cfg.conditions.central
        if central is None:
            problems.append("conditions.central: is required when conditions.backend is 'central'")
        elif central.token_env is None and central.token_file is None:
            problems.append("conditions.central: needs token_env (an environment variable holding the token) or "
                            "token_file (a file holding it)")
    prompt = cfg.conditions.prompt_global_tag
    if prompt in cfg.conditions.database_chain:
        problems.append(f"conditions.database_chain: must not contain the prompt global tag {prompt!r} "
                        "(it is put first in the chain automatically)")
    select = cfg.calibrations.select
    for name in cfg.calibrations.expert_config:
        if select and name not in select:
            problems.append(f"calibrations.expert_config.{name}: is not a selected calibration "
                            f"(select: {', '.join(select)})")
    return problems


def check_config(cfg: BucketConfig) -> None:
    """Raise one ConfigError listing every cross-field problem of ``cfg`` (each line names file and key)."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("\n".join(f"{cfg.path}: {line}" for line in problems))


def _present(section: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """The keys of ``section`` that the YAML sets: absent keys take the dataclass default."""
    return {key: section[key] for key in keys if key in section}


def build_config(document: Mapping[str, Any], path: Path) -> BucketConfig:
    """Turn a schema-valid document into a :class:`BucketConfig` (paths resolved against ``path``'s folder).

    Defaults live in the dataclasses above; a key the YAML leaves out is not passed at all.  Only defaults
    that depend on other keys (paths under ``work_dir``) are computed here.
    """
    base = path.parent

    def resolve(value: str) -> Path:
        p = Path(value).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    def path_or(section: Mapping[str, Any], key: str, default: Path) -> Path:
        return resolve(section[key]) if key in section else default

    bucket = BucketSection(**document["bucket"])
    work_dir = resolve(document["work_dir"])
    repo = document.get("settings_repository")
    rundb = document.get("rundb", {})
    data = document.get("data", {})
    sim = document.get("simulation")
    cond = document["conditions"]
    central = cond.get("central")
    cal = document["calibrations"]
    report = document.get("report", {})
    archive = document.get("archive", {})
    batch = document.get("batch", {})
    batch_res = batch.get("resources", {})
    gitlab = report.get("gitlab")
    return BucketConfig(
        path=path,
        bucket=bucket,
        work_dir=work_dir,
        settings_repository=SettingsRepoConfig(**repo) if repo else None,
        rundb=RunDBConfig(snapshot=path_or(rundb, "snapshot", work_dir / "rundb" / f"{bucket.name}.csv"),
                          **_present(rundb, "source", "url", "api_key_env", "timeout")),
        data=DataConfig(raw_directory=path_or(data, "raw_directory", work_dir / "data"),
                        cdst_directory=path_or(data, "cdst_directory", work_dir / "cdst"),
                        **_present(data, "source", "production_task_mb")),
        simulation=SimulationConfig(seed=sim["seed"], events=dict(sim["events"]),
                                    pxd_background_payload=(resolve(sim["pxd_background_payload"])
                                                            if "pxd_background_payload" in sim else None),
                                    weak_modes={k: float(v) for k, v in sim.get("weak_modes", {}).items()},
                                    movements=tuple(dict(m) for m in sim.get("movements", ())),
                                    **_present(sim, "files_per_run", "pxd_background"))
        if sim else None,
        conditions=ConditionsConfig(
            directory=path_or(cond, "directory", work_dir / "conditions"),
            database_chain=tuple(cond["database_chain"]), prompt_global_tag=cond["prompt_global_tag"],
            **_present(cond, "reference_global_tag", "backend"),
            central=CentralConditionsConfig(**{**central, **(
                {"token_file": resolve(central["token_file"])} if "token_file" in central else {})})
            if central else None),
        local_calibrations={sub: {gt: tuple(names) for gt, names in tags.items()}
                            for sub, tags in document.get("local_calibrations", {}).items()},
        calibrations=CalibrationsConfig(
            directory=resolve(cal["directory"]), select=tuple(cal.get("select", ())),
            expert_config={k: dict(v) for k, v in cal.get("expert_config", {}).items()},
            upload={k: dict(v) for k, v in cal.get("upload", {}).items()},
            **_present(cal, "on_validation_failure", "extra_input_data_filters", "subsystem_responsibles")),
        runner=RunnerConfig(**document.get("runner", {})),
        report=ReportConfig(**_present(report, "transport"), gitlab=GitLabConfig(**gitlab) if gitlab else None),
        archive=ArchiveConfig(directory=path_or(archive, "directory", work_dir / "archive"),
                              **_present(archive, "max_file_size_mb")),
        batch=BatchConfig(**_present(batch, "system", "workers", "retries", "status_cache_ttl", "progress_interval"),
                          default_resources=Resources(**batch_res.get("default", {})),
                          per_task={k: Resources(**v) for k, v in batch_res.get("per_task", {}).items()}),
    )


def parse_yaml(text: str, source: "str | Path") -> Any:
    """Parse YAML text; a syntax error names the file, line and column; nesting, alias expansion and
    duplicate keys are checked (see :mod:`b2luca.config_checks`)."""
    return parse_config_yaml(text, source)


def load_config(path: "str | Path") -> BucketConfig:
    """Read, validate and type a bucket YAML file (schema first, then the cross-field rules)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    document = parse_yaml(read_config_text(path), path)
    validate_document(document, path)
    cfg = build_config(document, path)
    check_config(cfg)
    return cfg
