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
import yaml

from .iov import IoV
from .errors import ConfigError

SCHEMA_VERSION = 1
TOKEN_KEYS = {"token", "private_token", "oauth_token", "job_token", "api_key", "password"}


# --- typed configuration --------------------------------------------------------------------------
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
    source: str  # synthetic | rest
    snapshot: Path
    url: str | None = None
    api_key_env: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class DataConfig:
    source: str  # synthetic | files
    raw_directory: Path
    cdst_directory: Path


@dataclass(frozen=True)
class SimulationConfig:
    seed: int
    events: dict[str, int]
    files_per_run: int = 1


@dataclass(frozen=True)
class ConditionsConfig:
    directory: Path
    database_chain: tuple[str, ...]
    prompt_global_tag: str
    reference_global_tag: str | None = None


@dataclass(frozen=True)
class CalibrationsConfig:
    directory: Path
    select: tuple[str, ...] = ()
    expert_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_validation_failure: str = "stop"


@dataclass(frozen=True)
class RunnerConfig:
    type: str = "native"  # native | basf2
    backend: str = "Local"
    command: str = "b2caf-prompt-run"
    timeout_min: float | None = None


@dataclass(frozen=True)
class GitLabConfig:
    url: str
    project: str
    token_env: str | None = None
    config_section: str | None = None
    config_file: str | None = None
    timeout: float = 30.0
    ssl_verify: bool = True


@dataclass(frozen=True)
class ReportConfig:
    transport: str = "local"  # local | gitlab
    gitlab: GitLabConfig | None = None


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
    system: str = "local"
    workers: int = 1
    default_resources: Resources = Resources()
    per_task: dict[str, Resources] = field(default_factory=dict)
    # batch clusters (issue 13): retries after a failed job, b2luigi's job-status cache, progress lines
    retries: int = 1
    status_cache_ttl: float = 2.0
    progress_interval: float = 10.0

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
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

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
    """Validate a parsed bucket document; raise one ConfigError for the most relevant mistake."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: (top level): must be a mapping of keys, got {type(document).__name__}")
    version = document.get("schema_version", SCHEMA_VERSION)
    try:
        schema = load_schema(version if isinstance(version, int) else SCHEMA_VERSION)
    except FileNotFoundError:
        raise ConfigError(f"{source}: schema_version: must be {SCHEMA_VERSION}, got {version!r}") from None
    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(document))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        key, expected = _describe(error)
        raise ConfigError(f"{source}: {key}: {expected}")
    _check_semantics(document, source)


def _check_semantics(doc: Mapping[str, Any], source: "str | Path") -> None:
    bucket = doc["bucket"]
    if bucket["last_run"] < bucket["first_run"]:
        raise ConfigError(f"{source}: bucket.last_run: must be >= bucket.first_run ({bucket['first_run']}), "
                          f"got {bucket['last_run']}")
    rundb = doc.get("rundb", {})
    if rundb.get("source") == "rest":
        for key in ("url", "api_key_env"):
            if key not in rundb:
                raise ConfigError(f"{source}: rundb.{key}: is required when rundb.source is 'rest'")
    if doc.get("data", {}).get("source", "synthetic") == "synthetic" and "simulation" not in doc:
        raise ConfigError(f"{source}: simulation: is required when data.source is 'synthetic' (the default)")
    report = doc.get("report", {})
    if report.get("transport") == "gitlab":
        gitlab = report.get("gitlab")
        if gitlab is None:
            raise ConfigError(f"{source}: report.gitlab: is required when report.transport is 'gitlab'")
        if "token_env" not in gitlab and "config_section" not in gitlab:
            raise ConfigError(f"{source}: report.gitlab: needs token_env (an environment variable holding the "
                              "token) or config_section (a section of ~/.python-gitlab.cfg)")
    chain = doc["conditions"]["database_chain"]
    prompt = doc["conditions"]["prompt_global_tag"]
    if prompt in chain:
        raise ConfigError(f"{source}: conditions.database_chain: must not contain the prompt global tag "
                          f"{prompt!r} (it is put first in the chain automatically)")
    cal = doc["calibrations"]
    for name in cal.get("expert_config", {}):
        if cal.get("select") and name not in cal["select"]:
            raise ConfigError(f"{source}: calibrations.expert_config.{name}: is not a selected calibration "
                              f"(select: {', '.join(cal['select'])})")


def _resources(doc: Mapping[str, Any] | None) -> Resources:
    return Resources(**(doc or {}))


def build_config(document: Mapping[str, Any], path: Path) -> BucketConfig:
    """Turn a validated document into a :class:`BucketConfig` (paths resolved against ``path``'s folder)."""
    base = path.parent

    def resolve(value: str) -> Path:
        p = Path(value).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    bucket = BucketSection(**document["bucket"])
    work_dir = resolve(document["work_dir"])
    repo = document.get("settings_repository")
    rundb = document.get("rundb", {})
    data = document.get("data", {})
    sim = document.get("simulation")
    cond = document["conditions"]
    cal = document["calibrations"]
    runner = document.get("runner", {})
    report = document.get("report", {})
    archive = document.get("archive", {})
    batch = document.get("batch", {})
    batch_res = batch.get("resources", {})
    return BucketConfig(
        path=path,
        bucket=bucket,
        work_dir=work_dir,
        settings_repository=SettingsRepoConfig(repo["url"], repo.get("branch")) if repo else None,
        rundb=RunDBConfig(
            source=rundb.get("source", "synthetic"),
            snapshot=resolve(rundb["snapshot"]) if "snapshot" in rundb else work_dir / "rundb" / f"{bucket.name}.csv",
            url=rundb.get("url"), api_key_env=rundb.get("api_key_env"), timeout=float(rundb.get("timeout", 30.0))),
        data=DataConfig(
            source=data.get("source", "synthetic"),
            raw_directory=resolve(data["raw_directory"]) if "raw_directory" in data else work_dir / "data",
            cdst_directory=resolve(data["cdst_directory"]) if "cdst_directory" in data else work_dir / "cdst"),
        simulation=SimulationConfig(int(sim["seed"]), dict(sim["events"]), int(sim.get("files_per_run", 1)))
        if sim else None,
        conditions=ConditionsConfig(
            directory=resolve(cond["directory"]) if "directory" in cond else work_dir / "conditions",
            database_chain=tuple(cond["database_chain"]), prompt_global_tag=cond["prompt_global_tag"],
            reference_global_tag=cond.get("reference_global_tag")),
        local_calibrations={sub: {gt: tuple(names) for gt, names in tags.items()}
                            for sub, tags in document.get("local_calibrations", {}).items()},
        calibrations=CalibrationsConfig(
            directory=resolve(cal["directory"]), select=tuple(cal.get("select", ())),
            expert_config={k: dict(v) for k, v in cal.get("expert_config", {}).items()},
            on_validation_failure=cal.get("on_validation_failure", "stop")),
        runner=RunnerConfig(type=runner.get("type", "native"), backend=runner.get("backend", "Local"),
                            command=runner.get("command", "b2caf-prompt-run"), timeout_min=runner.get("timeout_min")),
        report=ReportConfig(transport=report.get("transport", "local"),
                            gitlab=GitLabConfig(**report["gitlab"]) if report.get("gitlab") else None),
        archive=ArchiveConfig(directory=resolve(archive["directory"]) if "directory" in archive
                              else work_dir / "archive",
                              max_file_size_mb=float(archive.get("max_file_size_mb", 5.0))),
        batch=BatchConfig(system=batch.get("system", "local"), workers=int(batch.get("workers", 1)),
                          default_resources=_resources(batch_res.get("default")),
                          per_task={k: _resources(v) for k, v in batch_res.get("per_task", {}).items()},
                          **{k: batch[k] for k in ("retries", "status_cache_ttl", "progress_interval") if k in batch}),
        raw=dict(document),
    )


def parse_yaml(text: str, source: "str | Path") -> Any:
    """Parse YAML text; a syntax error names the file, line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{source}: {where}: not valid YAML ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None


def load_config(path: "str | Path", overrides: Mapping[str, Any] | None = None) -> BucketConfig:
    """Read, validate and type a bucket YAML file.

    ``overrides`` (optional) is a mapping merged section-wise over the file (used when the bucket
    YAML of the settings repository refines the local one).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    document = parse_yaml(path.read_text(), path)
    if overrides and isinstance(document, dict):
        document = {**document, **overrides}
    validate_document(document, path)
    return build_config(document, path)
