"""The calibration and validation scripts use only b2luca's public API.

A script may import public names of ``b2luca`` (and its own helpers in ``calibrations/``), but no
``_private`` name of another module, nothing from the toy simulation (``b2luca.sim``: nominal
constants come from the database chain or :mod:`b2luca.reco`) and nothing from the task graph
(``b2luca.tasks``).  The check reads the scripts' source (every import, also function-local ones).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CALIBRATIONS = Path(__file__).resolve().parents[2] / "calibrations"
FORBIDDEN_PACKAGES = ("b2luca.sim", "b2luca.tasks")
#: validations whose check *is* a simulation study, and the simulation modules they may use: the PXD
#: background GAN is judged by fitting simulated tracks with simulated vs generated background (issue 16)
SIMULATION_STUDIES = {"validations/pxd_background_gan.py": ("b2luca.sim.pxd_pulls",)}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(source: str, filename: str) -> list[str]:
    """One line per import of a private name, of a private b2luca module, or of a forbidden package."""
    tree = ast.parse(source, filename)
    problems: list[str] = []
    module_aliases: set[str] = set()

    allowed = SIMULATION_STUDIES.get(filename, ())

    def check_module(module: str, line: int) -> None:
        if any(module == a or module.startswith(a + ".") for a in allowed):
            return
        if any(module == p or module.startswith(p + ".") for p in FORBIDDEN_PACKAGES):
            problems.append(f"{filename}:{line}: imports {module}")
        elif module.split(".")[0] == "b2luca" and any(_private(part) for part in module.split(".")):
            problems.append(f"{filename}:{line}: imports the private module {module}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_module(alias.name, node.lineno)
                module_aliases.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            check_module(node.module, node.lineno)
            for alias in node.names:
                if _private(alias.name):
                    problems.append(f"{filename}:{node.lineno}: imports the private name {alias.name} "
                                    f"from {node.module}")
                else:
                    check_module(f"{node.module}.{alias.name}", node.lineno)
                    module_aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):  # module._private attribute access
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases):
            problems.append(f"{filename}:{node.lineno}: uses the private name {node.value.id}.{node.attr}")
    return problems


def scripts() -> list[Path]:
    return sorted(CALIBRATIONS.rglob("*.py"))


def test_there_are_scripts_to_check() -> None:
    names = {p.name for p in scripts()}
    assert {"vxdcdc_alignment.py", "_common.py", "beam_spot.py"} <= names


@pytest.mark.parametrize("path", scripts(), ids=lambda p: str(p.relative_to(CALIBRATIONS)))
def test_script_uses_public_api_only(path: Path) -> None:
    assert violations(path.read_text(), str(path.relative_to(CALIBRATIONS))) == []


@pytest.mark.parametrize("snippet", [
    "def f():\n    from b2luca.production import _fit_robust\n",
    "from b2luca.sim.truth import nominal_payloads\n",
    "import b2luca.sim\n",
    "from b2luca import sim\n",
    "from b2luca.tasks.driver import run_bucket\n",
    "from b2luca.alignment._arrays import x\n",
    "import b2luca.production as p\np._read_trees('x', ())\n",
])
def test_checker_catches(snippet: str) -> None:
    assert violations(snippet, "snippet.py"), snippet


def test_checker_allows_public_names() -> None:
    ok = ("from b2luca.reco.robust import fit_robust\nfrom calibrations._common import first_exprun\n"
          "from b2luca.contract import Verdict, read_input_data\nimport numpy as np\nx = np.__version__\n")
    assert violations(ok, "ok.py") == []
