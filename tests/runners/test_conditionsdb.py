"""Local calibrations with ``conditions.backend: central``: CopyLocalPayloads runs ``b2conditionsdb iovs copy``
in the basf2 setup (stand-in b2conditionsdb following the documented command line)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from b2luca.conditions import LocalDatabase
from b2luca.config import load_config
from b2luca.errors import RunnerError
from b2luca.iov import ExpRun, IoV
from b2luca.tasks.context import context_for
from b2luca.tasks.graph import CopyLocalPayloads

from bucket_helpers import make_bucket


@pytest.fixture
def central(tmp_path, basf2_standins, monkeypatch):
    server = tmp_path / "condb"
    monkeypatch.setenv("B2CONDB_STANDIN_DIR", str(server))
    monkeypatch.setenv("MY_GITLAB_TOKEN", "glpat-do-not-leak")
    monkeypatch.setenv("B2LUCA_TEST_CONDDB_TOKEN", "jwt-do-not-leak")
    source = LocalDatabase(server / "staging_svd_demo").create()
    source.store("SVDNoise", {"noise": np.array([1.5])}, IoV(26, 0, -1, -1))
    source.store("SVDLocalConfigParameters", {"xml": np.array([1.0])}, IoV(0, 0, -1, -1))
    source.store("SVDPedestal", {"p": np.array([3.0])}, IoV(0, 0, -1, -1))  # not asked for
    prompt = LocalDatabase(server / "prompt_demo").create()
    prompt.store("SVDNoise", {"noise": np.array([9.9])}, IoV(26, 1, -1, -1))  # an older copy: replaced
    config = make_bucket(tmp_path, changes={
        "conditions.backend": "central",  # its REST service is never contacted here: only the local copies run
        "conditions.central": {"url": "https://conddb.invalid/rest", "token_env": "B2LUCA_TEST_CONDDB_TOKEN"},
        "local_calibrations": {"SVD": {"staging_svd_demo": ["SVDNoise", "SVDLocalConfigParameters"]}},
        "runner.basf2": {"setup": "echo basf2 environment ready"},
        "report.transport": "local"})
    return server, config


def test_copy_local_payloads_through_b2conditionsdb(central):
    server, config = central
    cfg = load_config(config)
    task = CopyLocalPayloads(config_path=str(config), subsystem="SVD", source_tag="staging_svd_demo")
    task.run()
    commands = [json.loads(line) for line in (server / "commands.log").read_text().splitlines()]
    assert commands == [["iovs", "copy", "--replace", "-rf", "(SVDNoise|SVDLocalConfigParameters)", "--run-range",
                         "26", "1", "-1", "-1", "--set-run-range", "staging_svd_demo", "prompt_demo"]]
    prompt = LocalDatabase(server / "prompt_demo")
    assert sorted((e.name, str(e.iov)) for e in prompt.entries()) == [
        ("SVDLocalConfigParameters", str(cfg.prompt_iov)), ("SVDNoise", str(cfg.prompt_iov))]
    assert prompt.read("SVDNoise", ExpRun(26, 4))["noise"][0] == 1.5
    log = task.output_path().with_suffix(".log").read_text()
    assert "basf2 environment ready" in log and "glpat-do-not-leak" not in log
    result = json.loads(task.output_path().read_text())
    assert [p["name"] for p in result["payloads"]] == ["SVDNoise", "SVDLocalConfigParameters"]
    # nothing went into the embedded local database
    assert not (cfg.conditions.directory / "prompt_demo" / "database.txt").exists() or \
        not LocalDatabase(cfg.conditions.directory / "prompt_demo").entries()


def test_failed_copy_is_a_failed_task_with_the_log(central):
    server, config = central
    task = CopyLocalPayloads(config_path=str(config), subsystem="SVD", source_tag="staging_svd_demo")
    (server / "staging_svd_demo" / "database.txt").unlink()
    context_for.cache_clear()
    with pytest.raises(RunnerError, match="b2conditionsdb iovs copy from staging_svd_demo exited with code 1"
                                          "(.|\n)*global tag staging_svd_demo does not exist"):
        task.run()
    assert not task.output_path().exists()


def test_copy_command_escapes_payload_names():
    from b2luca.runners.conditionsdb import copy_command

    command = copy_command(["SVDGlobalXMLFile.xml", "CDCBadWires"], IoV(26, 1, -1, -1), "src", "dst")
    assert command[4:6] == ["-rf", r"(SVDGlobalXMLFile\.xml|CDCBadWires)"]
