"""Defensive reading of bucket YAML files: bounded, strict and with every problem reported at once.

``load_config`` goes through here before the JSON Schema sees a document:

* :func:`read_config_text` refuses files over :data:`MAX_CONFIG_BYTES`, UTF-16/UTF-32 files and invalid
  UTF-8 (naming the line and byte offset) instead of raising ``UnicodeDecodeError``;
* :func:`parse_config_yaml` composes the YAML node graph with a nesting limit (no ``RecursionError``),
  measures the graph *with aliases expanded* before anything is constructed (a "billion laughs" alias bomb
  is refused in milliseconds), and rejects duplicate mapping keys at any level;
* :func:`non_finite_problems` finds ``.nan``/``.inf`` anywhere (JSON Schema's numeric keywords let them
  through: ``nan > 0`` and ``nan <= 0`` are both false);
* :func:`expert_config_problems` checks ``calibrations.expert_config`` overrides against the defaults the
  calibration scripts declare (unknown keys, wrong types).

Every function returns or raises messages of the form ``<file>: <where>: <what was expected>``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from .errors import ConfigError

__all__ = ["MAX_CONFIG_BYTES", "MAX_DEPTH", "MAX_NODES", "read_config_text", "parse_config_yaml",
           "non_finite_problems", "expert_config_problems", "raise_problems"]

MAX_CONFIG_BYTES = 1 << 20  # a bucket file is a few kB; 1 MiB leaves room for long comments
MAX_DEPTH = 32  # nesting of mappings/sequences (the schema needs 5)
MAX_NODES = 100_000  # YAML nodes with every alias expanded


def raise_problems(problems: list[str]) -> None:
    """Raise one ConfigError listing every problem (one line each); do nothing for an empty list."""
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))


def read_config_text(path: Path) -> str:
    """The text of a bucket file: size-limited, UTF-8 only (a UTF-8 byte-order mark is dropped)."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: file is {size} bytes; a bucket configuration must be at most "
                              f"{MAX_CONFIG_BYTES} bytes")
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:  # grew while we looked
        raise ConfigError(f"{path}: a bucket configuration must be at most {MAX_CONFIG_BYTES} bytes")
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                      (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if data.startswith(bom):
            raise ConfigError(f"{path}: file is {name} encoded; save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\x00" in data:
        at = data.index(b"\x00")
        line = data[:at].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: NUL byte at offset {at} (UTF-16 without "
                          "a byte-order mark, or a binary file?); save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: invalid UTF-8 byte 0x{data[exc.start]:02x} at offset {exc.start}; "
                          "the file must be UTF-8") from None


try:  # libyaml scans and parses (fast); the Python composer below builds the node graph with our limits
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    _Base: type = yaml.SafeLoader
else:
    class _Base(Composer, _CParser, SafeConstructor, Resolver):  # type: ignore[misc,no-redef]
        """libyaml's event parser with PyYAML's Python composer and safe constructor."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


class _BoundedLoader(_Base):  # type: ignore[valid-type,misc]
    """A safe loader whose composer refuses nesting deeper than MAX_DEPTH (before Python's recursion limit)."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._source = source

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"{self._source}: line {mark.line + 1}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _key_text(node: Node) -> str:
    return node.value if isinstance(node, ScalarNode) else f"<{type(node).__name__}>"


def _inspect(root: Node, source: str) -> list[str]:
    """Problems of a composed node graph: expanded size, depth through aliases, duplicate keys."""
    problems: list[str] = []
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    active: set[int] = set()
    total = 0

    def visit(node: Node, path: str, depth: int) -> tuple[int, int]:
        nonlocal total
        key = id(node)
        if key in active:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: {path}: recursive alias (a node that "
                              "contains itself)")
        if key in memo:
            size, height = memo[key]
        else:
            if depth > MAX_DEPTH:
                raise ConfigError(f"{source}: line {node.start_mark.line + 1}: {path}: nested more than {MAX_DEPTH} "
                                  "levels deep (through aliases)")
            active.add(key)
            size, height = 1, 0
            if isinstance(node, SequenceNode):
                for i, child in enumerate(node.value):
                    s, h = visit(child, f"{path}[{i}]", depth + 1)
                    size, height = size + s, max(height, h + 1)
            elif isinstance(node, MappingNode):
                seen: dict[tuple[str, str], int] = {}
                for knode, vnode in node.value:
                    name = _key_text(knode)
                    ident = (knode.tag, name)
                    if isinstance(knode, ScalarNode) and ident in seen:
                        problems.append(f"{source}: line {knode.start_mark.line + 1}: "
                                        f"{path + '.' if path else ''}{name}: duplicate key (first at line "
                                        f"{seen[ident]})")
                    seen.setdefault(ident, knode.start_mark.line + 1)
                    s1, _ = visit(knode, f"{path}.{name}" if path else name, depth + 1)
                    s2, h = visit(vnode, f"{path}.{name}" if path else name, depth + 1)
                    size, height = size + s1 + s2, max(height, h + 1)
            active.discard(key)
            memo[key] = (size, height)
        if depth + height > MAX_DEPTH:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: {path or '(top level)'}: nested more "
                              f"than {MAX_DEPTH} levels deep (through aliases)")
        total = max(total, size)
        if size > MAX_NODES:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: {path or '(top level)'}: expands to more "
                              f"than {MAX_NODES} values through aliases (YAML alias bomb?)")
        return size, height

    visit(root, "", 0)
    return problems


def parse_config_yaml(text: str, source: "str | Path") -> Any:
    """Parse bucket YAML safely; a syntax error names the line and column, every duplicate key is reported."""
    source = str(source)
    loader = _BoundedLoader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        raise_problems(_inspect(node, source))
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(f"{source}: {where}: not valid YAML ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None
    finally:
        loader.dispose()


def non_finite_problems(document: Any, source: "str | Path", path: str = "") -> list[str]:
    """``.nan``/``.inf`` values anywhere in the document (a number in a bucket file must be finite)."""
    problems: list[str] = []
    if isinstance(document, float) and not math.isfinite(document):
        problems.append(f"{source}: {path or '(top level)'}: must be a finite number, got {document!r}")
    elif isinstance(document, Mapping):
        for key, value in document.items():
            problems += non_finite_problems(value, source, f"{path}.{key}" if path else str(key))
    elif isinstance(document, list):
        for i, value in enumerate(document):
            problems += non_finite_problems(value, source, f"{path}[{i}]")
    return problems


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def expert_config_problems(source: "str | Path", expert_config: Mapping[str, Mapping[str, Any]],
                           defaults: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Overrides in ``calibrations.expert_config`` that the scripts' ``expert_config`` defaults do not allow.

    ``defaults`` maps a calibration name to its script's expert_config. A key the script does not
    declare, or a value of another kind than the default (boolean, number, string, list, mapping;
    an integer where the default is a float is fine; a null default accepts anything), is a problem.
    Calibrations missing from ``defaults`` are left to the caller.
    """
    problems: list[str] = []
    for name, overrides in expert_config.items():
        if name not in defaults:
            continue
        known = defaults[name]
        for key, value in overrides.items():
            where = f"{source}: calibrations.expert_config.{name}.{key}"
            if key not in known:
                problems.append(f"{where}: is not a setting of {name} (known: {', '.join(sorted(known)) or 'none'})")
                continue
            want, got = _kind(known[key]), _kind(value)
            if want != "null" and want != got:
                problems.append(f"{where}: must be a {want} like the script's default {known[key]!r}, "
                                f"got {got} {value!r}")
            elif want == "number" and isinstance(known[key], int) and isinstance(value, float) \
                    and not value.is_integer():
                problems.append(f"{where}: must be an integer like the script's default {known[key]!r}, got {value!r}")
    return problems
