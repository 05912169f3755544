"""The shape of the package: no import cycle in ``b2luca/``, no python-gitlab in the task graph.

Check the import graph from the command line (prints the cycle, or nothing):

    python tests/test_architecture.py
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "b2luca"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: module level, also inside top-level if/try blocks,
    but not under ``if TYPE_CHECKING:`` and not inside functions or classes."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    visit(block)

    visit(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: {b2luca modules it imports at module level}}`` for every module of ``b2luca/``."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from pkg import mod`` imports the submodule pkg.mod; other names are read from pkg itself
                submodules = [f"{base}.{alias.name}" for alias in node.names]
                targets = submodules + ([base] if any(m not in modules for m in submodules) else [])
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle() -> list[str] | None:
    """One import cycle of ``b2luca/`` (as a list of modules), or None."""
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return None


def test_import_graph_of_b2luca_has_no_cycle():
    graph = import_graph()
    assert "b2luca.tasks.graph" in graph["b2luca.tasks"]  # the parser sees relative imports
    assert {"b2luca.tasks.calibration", "b2luca.tasks.archive"} <= graph["b2luca.tasks.graph"]
    assert find_cycle() is None, " -> ".join(find_cycle() or [])


def test_cycle_finder_finds_a_cycle(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "import_graph", lambda: {"a": {"b"}, "b": {"c"}, "c": {"a"}})
    cycle = find_cycle()
    assert cycle is not None and set(cycle) == {"a", "b", "c"}


def test_task_modules_import_b2luca_only_at_module_level():
    """A function-local import would hide a cycle from the check above (as ``stages -> archive ->
    calibration -> cdst -> stages`` once was)."""
    hidden = []
    for path in sorted((PACKAGE / "tasks").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top = set(map(id, _top_level_imports(tree)))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and id(node) not in top:
                hidden.append(f"{path.name}:{node.lineno}")
    assert not hidden, hidden


def test_task_graph_never_imports_gitlab():
    """Tasks emit report events; only the GitLab transport (loaded when configured) imports python-gitlab."""
    code = ("import sys, b2luca.tasks, b2luca.tasks.driver, b2luca.cli; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'gitlab' or m == 'b2luca.report.gitlab'); "
            "sys.exit(repr(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


if __name__ == "__main__":
    cycle = find_cycle()
    if cycle:
        print("import cycle: " + " -> ".join(cycle))
    sys.exit(1 if cycle else 0)
