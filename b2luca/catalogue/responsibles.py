"""Who is responsible for a subsystem: basf2's ``prompt.subsystem_responsibles`` or the bucket YAML.

basf2 maps each subsystem to ``CalibrationResponsible(name, gitlab_username)`` in
``prompt/subsystem_responsibles.py`` (``calibration_responsibles``). When that module is importable its
usernames are used; ``calibrations.subsystem_responsibles`` of the bucket YAML (``{subsystem: username}``)
fills in or overrides. Subsystem names are compared case-insensitively (``PXD`` is ``pxd``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

__all__ = ["basf2_responsibles", "subsystem_responsibles"]


def basf2_responsibles() -> dict[str, str]:
    """``{subsystem: gitlab_username}`` from basf2, or empty when basf2 is not importable."""
    try:
        module = importlib.import_module("prompt.subsystem_responsibles")
    except (Exception, SystemExit):  # no basf2 (or an unrelated 'prompt' package)
        return {}
    table = getattr(module, "calibration_responsibles", None)
    if not isinstance(table, Mapping):
        return {}
    found = {}
    for subsystem, responsible in table.items():
        username = getattr(responsible, "gitlab_username", None)
        if isinstance(username, str) and username:
            found[str(subsystem).lower()] = username
    return found


def subsystem_responsibles(configured: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{lower-cased subsystem: GitLab username}``: basf2's table updated by the YAML's."""
    table = basf2_responsibles()
    table.update({str(k).lower(): v for k, v in (configured or {}).items()})
    return table
