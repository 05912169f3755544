"""Static reading of basf2-style calibration and validation scripts (used by :mod:`b2luca.catalogue.discovery`).

A prompt calibration script declares ``settings = CalibrationSettings(...)`` at module level. To learn
its settings we must not import it: the script imports basf2 (and ROOT, and other scripts) at the top.
Instead we parse its source with :mod:`ast` and evaluate a small, safe subset of Python:

* literals (strings, numbers, booleans, None; lists, tuples, sets and dicts of literals; ``-1``),
* ``__doc__`` (the module docstring),
* ``INPUT_DATA_FILTERS[category][key]`` where ``INPUT_DATA_FILTERS`` is imported from ``prompt``
  or ``b2luca.catalogue``,
* ``+`` of two strings, two lists or two tuples (``"NOT " + INPUT_DATA_FILTERS["Magnet"]["Off"]``),
* f-strings of such values (``f"NOT {INPUT_DATA_FILTERS['Data Tag']['random_calib']}"``), ``*`` unpacking
  of lists inside lists, and indexing of module-level lists/dicts with constant keys,
* names bound earlier at module level by a simple assignment to such a value,
* another script's settings imported as ``from prompt.calibrations.<script> import settings as alias``
  (also ``from calibrations.<script> ...``, ``from .<script> ...``, or a module imported from such a
  package followed by ``.settings``), which becomes a :class:`DependencyRef` to that script's stem.

Anything else raises :class:`CatalogueError` naming the script, the line and the construct.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from ..errors import CatalogueError

__all__ = ["CatalogueError", "DependencyRef", "ParsedScript", "read_script"]

#: Module paths whose names we recognise (the basf2 package and ours).
_SETTINGS_MODULES = ("prompt", "b2luca.catalogue")
_SYMBOLS = ("CalibrationSettings", "ValidationSettings", "INPUT_DATA_FILTERS")
#: ``<anything.>calibrations.<stem>`` or a relative ``.<stem>``: a sibling calibration script.
_CALIBRATION_MODULE = re.compile(r"^(?:(?:[A-Za-z_]\w*\.)*calibrations|)\.([A-Za-z_]\w*)$")

_SUPPORTED = ("only literals, __doc__, INPUT_DATA_FILTERS[...][...], '+' of strings/lists/tuples, f-strings, "
              "module-level names bound to these, and other scripts' imported settings can be read "
              "without running the script")


@dataclass(frozen=True)
class DependencyRef:
    """``settings`` of another calibration script, known so far only by the script's stem."""

    stem: str
    lineno: int
    source: str  # the import as written, for messages

    def __repr__(self) -> str:  # shown in messages
        return f"<settings of {self.stem}.py>"


@dataclass(frozen=True)
class _Symbol:
    name: str  # one of _SYMBOLS


@dataclass(frozen=True)
class _Module:
    dotted: str  # a module (or unknown object) bound by an import; relative paths start with "."


@dataclass(frozen=True)
class _Unreadable:
    """A module-level name whose value cannot be evaluated statically."""

    lineno: int
    reason: str


@dataclass
class ParsedScript:
    """What static reading found in one script."""

    path: Path
    kind: str | None  # "calibration", "validation" or None (no settings)
    kwargs: dict[str, Any] = field(default_factory=dict)
    lineno: int = 0  # line of ``settings = ...``
    functions: frozenset[str] = frozenset()  # module-level ``def`` names
    #: "CalibrationSettings" / "ValidationSettings" when the script imports them (from prompt or b2luca)
    settings_classes: frozenset[str] = frozenset()

    @property
    def imports_settings_class(self) -> bool:
        """Whether the script imports (or calls) a settings class, i.e. means to declare settings."""
        return bool(self.settings_classes)

    @property
    def stem(self) -> str:
        """File name without ``.py``: what other scripts import it as."""
        return self.path.stem


def _symbol_for(dotted: str) -> _Symbol | None:
    module, _, attr = dotted.rpartition(".")
    if module in _SETTINGS_MODULES and attr in _SYMBOLS:
        return _Symbol(attr)
    return None


def _calibration_stem(dotted_module: str) -> str | None:
    match = _CALIBRATION_MODULE.match(dotted_module)
    return match.group(1) if match else None


class _Reader:
    def __init__(self, path: Path, source: str, filters: Mapping[str, Mapping[str, str]]):
        self.path = path
        self.source = source
        self.filters = filters
        self.env: dict[str, Any] = {}
        self.docstring: str | None = None

    # --- errors ------------------------------------------------------------------------------
    def error(self, node: ast.AST | int, what: str) -> CatalogueError:
        lineno = node if isinstance(node, int) else getattr(node, "lineno", 0)
        return CatalogueError(f"{self.path}:{lineno}: {what}")

    def unsupported(self, node: ast.AST, what: str) -> CatalogueError:
        text = " ".join(ast.unparse(node).split())
        if len(text) > 70:
            text = text[:67] + "..."
        return self.error(node, f"unsupported construct in the settings: {what} (`{text}`); {_SUPPORTED}")

    # --- module walk -------------------------------------------------------------------------
    def read(self) -> ParsedScript:
        try:
            tree = ast.parse(self.source, filename=str(self.path))
        except SyntaxError as exc:
            raise CatalogueError(f"{self.path}:{exc.lineno}: syntax error: {exc.msg}") from None
        self.docstring = ast.get_docstring(tree, clean=False)
        result = ParsedScript(path=self.path, kind=None)
        functions: set[str] = set()
        settings_node: ast.Assign | ast.AnnAssign | None = None
        settings_env: dict[str, Any] = {}

        for stmt in tree.body:
            if isinstance(stmt, ast.ImportFrom):
                self._import_from(stmt)
            elif isinstance(stmt, ast.Import):
                self._import(stmt)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets: list[ast.expr] = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if stmt.value is None:  # bare annotation ``x: int``
                    continue
                if any(isinstance(t, ast.Name) and t.id == "settings" for t in targets):
                    settings_node = stmt
                    settings_env = dict(self.env)  # names visible at that point
                self._assign(targets, stmt.value, stmt.lineno)
            elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not isinstance(stmt, ast.ClassDef):
                    functions.add(stmt.name)
                self.env[stmt.name] = _Unreadable(stmt.lineno, f"'{stmt.name}' is a function or class")
            else:
                self._mark_bound_names(stmt)

        result.functions = frozenset(functions)
        classes = {v.name for v in self.env.values()
                   if isinstance(v, _Symbol) and v.name in ("CalibrationSettings", "ValidationSettings")}
        if settings_node is not None and self._looks_like_settings(settings_node):
            classes.add(self._callee_name(settings_node.value))
        result.settings_classes = frozenset(classes)
        if settings_node is None:
            return result
        call = settings_node.value
        self.env = settings_env
        if not isinstance(call, ast.Call):
            if result.imports_settings_class:
                raise self.unsupported(call or settings_node, "'settings' must be assigned a CalibrationSettings(...) "
                                             "or ValidationSettings(...) call")
            return result
        func = self._eval_callee(call.func)
        if not (isinstance(func, _Symbol) and func.name in ("CalibrationSettings", "ValidationSettings")):
            if result.imports_settings_class:
                raise self.unsupported(call.func, "'settings' is not built by CalibrationSettings(...) "
                                                  "or ValidationSettings(...) imported from prompt or "
                                                  "b2luca.catalogue")
            return result
        if call.args:
            raise self.unsupported(call.args[0], f"positional argument to {func.name}; use keywords")
        kwargs: dict[str, Any] = {}
        for kw in call.keywords:
            if kw.arg is None:
                raise self.unsupported(kw.value, f"'**' unpacking in {func.name}(...)")
            if kw.arg in kwargs:
                raise self.error(kw.value, f"keyword '{kw.arg}' given twice to {func.name}(...)")
            kwargs[kw.arg] = self.eval(kw.value)
        result.kind = "calibration" if func.name == "CalibrationSettings" else "validation"
        result.kwargs = kwargs
        result.lineno = settings_node.lineno
        return result

    @staticmethod
    def _callee_name(call: ast.expr | None) -> str:
        if isinstance(call, ast.Call):
            return call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
        return ""

    def _looks_like_settings(self, node: ast.Assign | ast.AnnAssign) -> bool:
        return self._callee_name(node.value) in ("CalibrationSettings", "ValidationSettings")

    def _import_from(self, stmt: ast.ImportFrom) -> None:
        base = "." * stmt.level + (stmt.module or "")
        for alias in stmt.names:
            bound = alias.asname or alias.name
            if alias.name == "*":
                if base in _SETTINGS_MODULES:  # ``from prompt import *``
                    self.env.update({name: _Symbol(name) for name in _SYMBOLS})
                continue
            full = f"{base}{alias.name}" if base.endswith(".") else f"{base}.{alias.name}"
            symbol = _symbol_for(full)
            if symbol is not None:
                self.env[bound] = symbol
            elif alias.name == "settings" and (stem := _calibration_stem(base)) is not None:
                self.env[bound] = DependencyRef(stem, stmt.lineno, ast.unparse(stmt))
            else:
                self.env[bound] = _Module(full)

    def _import(self, stmt: ast.Import) -> None:
        for alias in stmt.names:
            if alias.asname:
                self.env[alias.asname] = _Module(alias.name)
            else:
                top = alias.name.split(".")[0]
                self.env[top] = _Module(top)

    def _assign(self, targets: list[ast.expr], value: ast.expr, lineno: int) -> None:
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if len(names) != len(targets):  # tuple unpacking, attributes, subscripts
            self._mark_stores(targets, lineno, "bound by an unpacking or attribute assignment")
            return
        try:
            val: Any = self.eval(value)
        except CatalogueError as exc:
            val = _Unreadable(lineno, str(exc))
        for name in names:
            self.env[name] = val

    def _mark_stores(self, nodes: Sequence[ast.AST], lineno: int, reason: str) -> None:
        for node in nodes:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    self.env[sub.id] = _Unreadable(lineno, f"'{sub.id}' is {reason}")

    def _mark_bound_names(self, stmt: ast.stmt) -> None:
        """Any other statement (if/for/try/with/aug-assign...): names it binds become unreadable."""
        kind = type(stmt).__name__
        reason = f"modified or bound inside a module-level {kind} statement at line {stmt.lineno}"
        stack: list[ast.AST] = [stmt]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.env[node.id] = _Unreadable(stmt.lineno, f"'{node.id}' is {reason}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    self.env[bound] = _Unreadable(stmt.lineno, f"'{bound}' is {reason}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.env[node.name] = _Unreadable(stmt.lineno, f"'{node.name}' is {reason}")
                continue  # names inside a nested body are local to it
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                self.env[node.target.id] = _Unreadable(stmt.lineno, f"'{node.target.id}' is {reason}")
            stack.extend(ast.iter_child_nodes(node))

    # --- expressions -------------------------------------------------------------------------
    def _eval_callee(self, node: ast.expr) -> Any:
        try:
            return self._eval_ref(node)
        except CatalogueError:
            return None

    def _lookup(self, node: ast.Name) -> Any:
        if node.id == "__doc__":
            return self.docstring
        if node.id not in self.env:
            raise self.error(node, f"name '{node.id}' is not bound at module level before this line "
                                   f"(static reading sees only simple module-level assignments and imports)")
        value = self.env[node.id]
        if isinstance(value, _Unreadable):
            raise self.error(node, f"name '{node.id}' cannot be read statically (bound at line "
                                   f"{value.lineno}): {value.reason}")
        return value

    def _eval_ref(self, node: ast.expr) -> Any:
        """A Name or a dotted attribute chain on an imported module."""
        if isinstance(node, ast.Name):
            return self._lookup(node)
        if isinstance(node, ast.Attribute):
            base = self._eval_ref(node.value)
            if isinstance(base, _Module):
                dotted = f"{base.dotted}.{node.attr}"
                symbol = _symbol_for(dotted)
                if symbol is not None:
                    return symbol
                if node.attr == "settings" and (stem := _calibration_stem(base.dotted)) is not None:
                    return DependencyRef(stem, node.lineno, ast.unparse(node))
                return _Module(dotted)
            raise self.unsupported(node, "attribute access")
        raise self.unsupported(node, f"{type(node).__name__} expression")

    def eval(self, node: ast.expr) -> Any:
        """Evaluate one expression of the supported subset."""
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (str, int, float, bool)) or node.value is None:
                return node.value
            raise self.unsupported(node, f"{type(node.value).__name__} constant")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
            number: float = node.operand.value  # type: ignore[assignment]  # int or float, checked above
            return -number if isinstance(node.op, ast.USub) else number
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items: list[Any] = []
            for elt in node.elts:
                if isinstance(elt, ast.Starred):
                    spread = self.eval(elt.value)
                    if not isinstance(spread, (list, tuple)):
                        raise self.unsupported(elt, f"'*' unpacking of {type(spread).__name__}")
                    items.extend(spread)
                    continue
                items.append(self.eval(elt))
            if isinstance(node, ast.List):
                return items
            if isinstance(node, ast.Tuple):
                return tuple(items)
            try:
                return set(items)
            except TypeError:
                raise self.unsupported(node, "set of unhashable values") from None
        if isinstance(node, ast.Dict):
            out: dict[Any, Any] = {}
            for key, value in zip(node.keys, node.values):
                if key is None:
                    raise self.unsupported(value, "'**' unpacking in a dict")
                k = self.eval(key)
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise self.unsupported(key, "dict key that is not a string or number")
                out[k] = self.eval(value)
            return out
        if isinstance(node, ast.Subscript):
            return self._eval_filter(node)
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, ast.Add):
                raise self.unsupported(node, f"operator {type(node.op).__name__}")
            left, right = self.eval(node.left), self.eval(node.right)
            if type(left) is type(right) and isinstance(left, (str, list, tuple)):
                return left + right
            raise self.unsupported(node, f"'+' of {type(left).__name__} and {type(right).__name__}")
        if isinstance(node, (ast.Name, ast.Attribute)):
            value = self._eval_ref(node)
            if isinstance(value, _Symbol):
                if value.name == "INPUT_DATA_FILTERS":
                    raise self.unsupported(node, "INPUT_DATA_FILTERS used without [category][key]")
                raise self.unsupported(node, f"{value.name} used as a value")
            if isinstance(value, _Module):
                raise self.unsupported(node, f"'{value.dotted}' is imported from another module and "
                                             f"cannot be evaluated without running it")
            return value
        if isinstance(node, ast.Call):
            raise self.unsupported(node, "function call")
        if isinstance(node, ast.JoinedStr):
            return self._eval_fstring(node)
        raise self.unsupported(node, f"{type(node).__name__} expression")

    def _eval_fstring(self, node: ast.JoinedStr) -> str:
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
                continue
            assert isinstance(value, ast.FormattedValue)
            if value.format_spec is not None:
                raise self.unsupported(node, "f-string with a format specification")
            item = self.eval(value.value)
            if not isinstance(item, (str, int, float, bool)):
                raise self.unsupported(node, f"f-string of a {type(item).__name__}")
            parts.append(repr(item) if value.conversion == ord("r") else str(item))
        return "".join(parts)

    def _eval_filter(self, node: ast.Subscript) -> Any:
        inner = node.value
        base = self._eval_ref(inner.value) if isinstance(inner, ast.Subscript) \
            and isinstance(inner.value, (ast.Name, ast.Attribute)) else None
        if not (isinstance(inner, ast.Subscript) and isinstance(base, _Symbol) and base.name == "INPUT_DATA_FILTERS"):
            return self._eval_index(node)
        category = self.eval(inner.slice)
        key = self.eval(node.slice)
        if category not in self.filters:
            raise self.error(node, f"unknown INPUT_DATA_FILTERS category {category!r}; known: "
                                   f"{', '.join(repr(c) for c in self.filters)}")
        values = self.filters[category]
        if key not in values:
            raise self.error(node, f"unknown filter {key!r} in INPUT_DATA_FILTERS[{category!r}]; known: "
                                   f"{', '.join(repr(v) for v in values)}")
        return values[key]


    def _eval_index(self, node: ast.Subscript) -> Any:
        """``name[key]`` on a module-level list/tuple/dict with a constant key."""
        container = self.eval(node.value)
        key = self.eval(node.slice)
        if isinstance(container, dict) and key in container:
            return container[key]
        if isinstance(container, (list, tuple)) and isinstance(key, int) and -len(container) <= key < len(container):
            return container[key]
        raise self.unsupported(node, f"subscript [{key!r}] of a {type(container).__name__} that has no such item")


def read_script(path: Path, filters: Mapping[str, Mapping[str, str]]) -> ParsedScript:
    """Read one script statically; ``kind`` is None when it declares no settings.

    Raises :class:`CatalogueError` (naming ``path`` and the line) for syntax errors and for
    settings that use constructs outside the supported subset.
    """
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"{path}: cannot read the script: {exc}") from None
    return _Reader(path, source, filters).read()
