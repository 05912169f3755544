"""The configuration keys of issue 12: conditions.backend/central and calibrations.upload."""

from __future__ import annotations

import re

import pytest

from b2luca.cli import main
from b2luca.conditions.backend import CentralBackend, LocalBackend, backend_for
from b2luca.config import load_config
from b2luca.enums import ConditionsBackend
from b2luca.errors import ConditionsConfigError, ConfigError

from bucket_helpers import make_bucket


def test_defaults_are_local_and_an_empty_rule(tmp_path):
    cfg = load_config(make_bucket(tmp_path))
    assert cfg.conditions.backend is ConditionsBackend.LOCAL and cfg.conditions.central is None
    assert isinstance(backend_for(cfg), LocalBackend)


def test_central_backend_with_a_token_file_relative_to_the_yaml(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("secret-jwt\n")
    cfg = load_config(make_bucket(tmp_path, changes={
        "conditions.backend": "central",
        "conditions.central": {"url": "https://conddb.example/rest", "token_file": "token", "retries": 2},
        "calibrations.upload": {"default": {"min_significance": 2}, "SVDTimeOffsets": {"max_change": 3.5}}}))
    assert cfg.conditions.central.token_file == tmp_path / "token"
    assert cfg.conditions.central.timeout == 30.0 and cfg.conditions.central.retries == 2
    backend = backend_for(cfg)
    assert isinstance(backend, CentralBackend) and backend.tag == "prompt_demo"
    assert "secret-jwt" not in repr(backend.client) and backend.client.base == "https://conddb.example/rest/v2/"
    assert cfg.calibrations.upload["SVDTimeOffsets"] == {"max_change": 3.5}


@pytest.mark.parametrize("changes, message", [
    ({"conditions.backend": "central"}, "conditions.central: is required when conditions.backend is 'central'"),
    ({"conditions.backend": "central", "conditions.central": {"url": "https://x"}}, "needs token_env"),
    ({"conditions.central": {"url": "https://x", "token": "abc"}}, "conditions.central.token: secrets never go"),
    ({"conditions.backend": "remote"}, "conditions.backend: must be one of 'local', 'central'"),
    ({"calibrations.upload": {"default": {"min_sigma": 3}}}, "calibrations.upload.default.min_sigma: is not a known"),
    ({"calibrations.upload": {"default": {"max_change": -1}}}, "calibrations.upload.default.max_change: must be > 0"),
])
def test_mistakes_name_the_key(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(make_bucket(tmp_path, changes=changes))


def test_the_conditions_db_token_variable_never_reaches_calibration_scripts(tmp_path, monkeypatch):
    from b2luca.runners import runner_for
    from b2luca.runners.base import child_environment

    monkeypatch.setenv("CONDDB_JWT", "secret-jwt")  # a name the generic secret filter would not catch
    cfg = load_config(make_bucket(tmp_path, changes={
        "conditions.backend": "central", "conditions.central": {"url": "https://x", "token_env": "CONDDB_JWT"}}))
    runner = runner_for(cfg)
    assert "CONDDB_JWT" in runner.secret_names and "CONDDB_JWT" not in child_environment(runner.secret_names)


def test_missing_token_and_unknown_calibration_in_the_rule(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("B2LUCA_NO_SUCH_TOKEN", raising=False)
    cfg = load_config(make_bucket(tmp_path, changes={
        "conditions.backend": "central",
        "conditions.central": {"url": "https://conddb.example", "token_env": "B2LUCA_NO_SUCH_TOKEN"}}))
    with pytest.raises(ConditionsConfigError, match="B2LUCA_NO_SUCH_TOKEN"):
        backend_for(cfg)
    config = make_bucket(tmp_path, changes={"calibrations.upload": {"SVDTimeOffset": {"max_change": 1}}})
    assert main(["check", str(config)]) == 2
    assert "calibrations.upload.SVDTimeOffset: no calibration of that name" in capsys.readouterr().err
