"""Subsystem -> GitLab user: basf2's prompt.subsystem_responsibles when importable, the bucket YAML on top."""

from __future__ import annotations

import sys
import types
from collections import namedtuple

from b2luca.catalogue.responsibles import subsystem_responsibles


def test_yaml_only_without_basf2():
    assert subsystem_responsibles({"PXD": "pxd_expert"}) == {"pxd": "pxd_expert"}


def test_basf2_table_then_yaml(monkeypatch):
    responsible = namedtuple("CalibrationResponsible", ["name", "gitlab_username"])
    module = types.ModuleType("prompt.subsystem_responsibles")
    module.calibration_responsibles = {"svd": responsible("An Expert", "an.expert"),
                                       "cdc": responsible("Other", "other")}
    monkeypatch.setitem(sys.modules, "prompt.subsystem_responsibles", module)
    assert subsystem_responsibles({"cdc": "bucket_cdc"}) == {"svd": "an.expert", "cdc": "bucket_cdc"}
