"""Bucket config: schema validation with messages naming file, key path and expectation."""

from pathlib import Path

import pytest
import yaml

from b2luca.config import ConfigError, load_config, load_schema

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def _write(tmp_path: Path, doc) -> Path:
    path = tmp_path / "bucket.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


@pytest.fixture()
def demo_doc():
    return yaml.safe_load(DEMO.read_text())


def test_demo_config_loads_with_absolute_paths():
    cfg = load_config(DEMO)
    assert cfg.name == "demo" and str(cfg.requested_iov) == "26,1,26,8" and str(cfg.prompt_iov) == "26,1,-1,-1"
    assert cfg.calibrations.directory == REPO / "calibrations"
    assert cfg.rundb.snapshot == REPO / "rundb" / "demo.csv"
    assert cfg.conditions.database_chain == ("nominal_demo",)
    assert cfg.local_calibrations["PXD"]["staging_pxd_demo"] == ("PXDMasks",)
    assert cfg.batch.workers >= 1 and cfg.runner.type == "native" and cfg.report.transport == "local"


def test_schema_ships_in_package():
    assert load_schema(1)["title"].startswith("b2luca")


def _set(doc, dotted, value):
    node = doc
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


_DELETE = object()

MISTAKES = [
    ("bucket.name", _DELETE, r"bucket\.name: is required"),
    ("bucket.experiment", "twenty-six", r"bucket\.experiment: must be of type integer"),
    ("bucket.first_run", -3, r"bucket\.first_run: must be >= 0"),
    ("bucket.last_run", 0, r"bucket\.last_run: must be >= bucket\.first_run"),
    ("runner.type", "slurm", r"runner\.type: must be one of 'native', 'basf2'"),
    ("batch.workers", 0, r"batch\.workers: must be >= 1"),
    ("batch.wrokers", 3, r"batch\.wrokers: is not a known key here; expected one of: progress_interval, resources, retries, status_cache_ttl, system, workers"),
    ("conditions.database_chain", [], r"conditions\.database_chain: must not be empty"),
    ("conditions.database_chain", ["nominal_demo", "prompt_demo"], r"must not contain the prompt global tag"),
    ("calibrations.on_validation_failure", "ignore", r"on_validation_failure: must be one of 'stop', 'continue'"),
    ("report.transport", "gitlab", r"report\.gitlab: is required when report\.transport is 'gitlab'"),
    ("report.gitlab", {"url": "https://gitlab.example", "project": "g/p", "token": "glpat-x"},
     r"report\.gitlab\.token: secrets never go in the YAML"),
    ("simulation.events.dimuon", 5, r"simulation\.events\.dimuon: is not an allowed key; expected one of: cosmic_calib"),
    ("rundb.source", "rest", r"rundb\.url: is required when rundb\.source is 'rest'"),
    ("schema_version", 2, r"schema_version: must be 1"),
    ("calibrations.expert_config", {"CDCTimeZeros": 3}, r"calibrations\.expert_config\.CDCTimeZeros: must be of type object"),
]


@pytest.mark.parametrize("key,value,message", MISTAKES, ids=[m[0] + ":" + str(i) for i, m in enumerate(MISTAKES)])
def test_typical_mistakes_name_file_key_and_expectation(tmp_path, demo_doc, key, value, message):
    _set(demo_doc, key, value)
    path = _write(tmp_path, demo_doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert all(line.startswith(f"{path}: ") for line in text.splitlines()), text  # one line per problem
    import re
    assert re.search(message, text), text


def test_every_cross_field_problem_is_reported_in_one_run(tmp_path, demo_doc):
    _set(demo_doc, "bucket.last_run", 0)
    _set(demo_doc, "rundb.source", "rest")
    _set(demo_doc, "conditions.database_chain", ["nominal_demo", "prompt_demo"])
    path = _write(tmp_path, demo_doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["bucket.last_run", "rundb.url", "rundb.api_key_env",
                                                      "conditions.database_chain"], lines
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_yaml_syntax_error_names_line(tmp_path):
    path = _write(tmp_path, "schema_version: 1\nbucket: {name: demo\n  experiment: 26\n")
    with pytest.raises(ConfigError, match=r"bucket\.yaml: line \d+, column \d+: not valid YAML"):
        load_config(path)


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.yaml")


def test_relative_paths_resolve_against_config_dir(tmp_path, demo_doc):
    demo_doc["work_dir"] = "w"
    demo_doc["calibrations"]["directory"] = str(REPO / "calibrations")
    del demo_doc["conditions"]["directory"]
    cfg = load_config(_write(tmp_path, demo_doc))
    assert cfg.work_dir == tmp_path / "w" and cfg.conditions.directory == tmp_path / "w" / "conditions"


def test_site_example_validates():
    cfg = load_config(REPO / "configs" / "example-site.yaml")
    assert cfg.rundb.source == "rest" and cfg.rundb.api_key_env == "BELLE2_RUNDB_KEY"
    assert cfg.report.gitlab.token_env == "B2LUCA_GITLAB_TOKEN" and cfg.runner.type == "basf2"
    assert cfg.batch.resources_for("caf_vxdcdc_alignment").cpus == 8
    assert cfg.batch.resources_for("caf_cdc").memory_mb == 4000


def test_schema_choices_are_the_enums():
    """Every choice key of the schema lists exactly the members of its enum (one vocabulary)."""
    from b2luca.enums import (BatchSystem, ConditionsBackend, DataSource, OnValidationFailure, PXDBackground,
                              RunDBSource, RunnerType, Transport)

    props = load_schema(1)["properties"]
    for section, key, enum in [("data", "source", DataSource), ("rundb", "source", RunDBSource),
                               ("conditions", "backend", ConditionsBackend),
                               ("report", "transport", Transport), ("runner", "type", RunnerType),
                               ("calibrations", "on_validation_failure", OnValidationFailure),
                               ("batch", "system", BatchSystem), ("simulation", "pxd_background", PXDBackground)]:
        assert props[section]["properties"][key]["enum"] == [m.value for m in enum], (section, key)


def test_defaults_come_from_the_dataclasses(tmp_path, demo_doc):
    """A key left out of the YAML takes its dataclass default (no second default in the loader)."""
    import dataclasses

    from b2luca.config import ArchiveConfig, DataConfig, RunnerConfig, RunDBConfig
    from b2luca.enums import DataSource, OnValidationFailure, RunnerType, Transport

    for section in ("runner", "report", "archive", "rundb", "data", "batch"):
        demo_doc.pop(section, None)
    demo_doc["calibrations"].pop("on_validation_failure")
    demo_doc["data"] = {"raw_directory": "data"}
    cfg = load_config(_write(tmp_path, demo_doc))
    defaults = {f.name: f.default for cls in (RunnerConfig, RunDBConfig, ArchiveConfig, DataConfig)
                for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    assert cfg.runner.type is RunnerType.NATIVE and cfg.runner.command == defaults["command"]
    assert cfg.rundb.timeout == defaults["timeout"] and cfg.archive.max_file_size_mb == defaults["max_file_size_mb"]
    assert cfg.data.source is DataSource.SYNTHETIC and cfg.report.transport is Transport.LOCAL
    assert cfg.calibrations.on_validation_failure is OnValidationFailure.STOP
    assert cfg.batch.workers == 1 and cfg.batch.resources_for("X").memory_mb == 2000
    from b2luca.config import BatchConfig
    from b2luca.enums import BatchSystem

    assert cfg.batch.system is BatchSystem.LOCAL and not cfg.batch.system.is_cluster
    assert (cfg.batch.retries, cfg.batch.status_cache_ttl, cfg.batch.progress_interval) == (
        BatchConfig.retries, BatchConfig.status_cache_ttl, BatchConfig.progress_interval)
    assert cfg.archive.directory == cfg.work_dir / "archive" and cfg.data.cdst_directory == cfg.work_dir / "cdst"


def test_gitlab_tuning_keys_the_docstring_promises_are_accepted(tmp_path, demo_doc):
    demo_doc["report"] = {"transport": "gitlab", "gitlab": {
        "url": "https://gitlab.example", "project": "calib/prompt", "token_env": "GITLAB_TOKEN",
        "max_retries": 0, "max_retry_after": 5.5, "rate_limit_retries": 1}}
    gitlab = load_config(_write(tmp_path, demo_doc)).report.gitlab
    assert (gitlab.max_retries, gitlab.max_retry_after, gitlab.rate_limit_retries) == (0, 5.5, 1)
    demo_doc["report"]["gitlab"]["max_retries"] = -1
    with pytest.raises(ConfigError, match=r"report\.gitlab\.max_retries: must be >= 0"):
        load_config(_write(tmp_path, demo_doc))
