"""ROOT files of tables of numpy columns: written atomically (temporary name, then rename), and read back
with errors that name the file, the table and the column.

**Layout (one container tree per file).**  All tables ``{table: {column: array}}`` of a file are one TTree,
``b2luca_tables``, with a single branch ``bytes`` of ``unsigned char``: the tables' packed records one after
the other (each table ``(rows, record bytes)``, a packed big-endian record per row -- the physical layout of a
ROOT leaf-list branch).  The tree's title describes them, in order: ``b2luca-tables:`` followed by
``name[rows]=leaflist`` entries separated by ``;``, e.g. ``b2luca-tables:event[60]=event/L:n_cand/I;cdc[412]=...``
(leaf-list types B b S s I i L l F D O as in ``TTree::Branch``; ``[n]`` a fixed-size array column).  A ROOT
user reads the byte branch and views each table's slice with its leaf list.  Consecutive tables share a
basket until it holds :data:`BASKET_BYTES` (a table over :data:`CHUNK_BYTES` is split into baskets of that
size; the title is at most :data:`MAX_TITLE_BYTES`, a ROOT key's limit); a reader of some tables reads the entry ranges that hold them
(tables less than :data:`BASKET_BYTES` apart in one range), so mostly only their baskets are decompressed.

Why: uproot's fixed cost per file is per TTree (~0.5 ms to deserialise its metadata), per TBranch and per
basket (~0.4-0.5 ms each to interpret, compress and write): a file of one tree per table cost ~6 ms to read
and ~6 ms to write however few rows it held (a 60-event raw file: 8 tables), one tree of one branch and one
basket ~1 + 2 ms (``benchmarks/rootio_bench.py``).  A bucket of hundreds of runs has thousands of small
files, each read by the production and by several calibrations (issue 15).  The price: a reader of a few
columns decompresses the baskets of their whole tables, and rows compress less well than columns.

Files of the earlier layouts (before issue 15: one TTree per table, packed as ``b2luca-rows:`` + leaf list in
a ``rows`` branch, or one branch per column) are read as well.

**Compression.**  Zstandard level 1 (ROOT's algorithm 5, read by ROOT >= 6.20 and by uproot through its
``cramjam`` dependency): on a cDST file it writes 4x and reads 1.5x faster than ROOT's historical default
ZLIB level 1 at the same size (5.2 MB for a 1,500-event di-muon cDST file); the 8-run demo's cDST
production took 18.6 instead of 22.3 CPU-s (issue 15).  Files written with any compression are read.

uproot >= 5.7 writes an RNTuple for ``file[name] = {...}``; Belle II raw and cDST files are TTrees, so
trees are created explicitly with ``mktree``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Collection, Mapping

import numpy as np
import uproot

from .atomic import atomic_path
from .errors import RootReadError

#: compression of written files (see the module docstring)
COMPRESSION = uproot.ZSTD(1)
#: title prefix of a packed table's TTree; the ROOT leaf list of its columns follows
PACKED_TITLE = "b2luca-rows:"
#: the single branch of a packed table
PACKED_BRANCH = "rows"
#: the one TTree of a file of the container layout, its byte branch and its title prefix (module docstring)
CONTAINER_TREE = "b2luca_tables"
CONTAINER_BRANCH = "bytes"
CONTAINER_TITLE = "b2luca-tables:"
#: consecutive tables share one basket until it holds this many bytes (uncompressed)
BASKET_BYTES = 256 * 1024
#: the most bytes one basket is written with: a larger table is split (a basket's byte counts are 32-bit)
CHUNK_BYTES = 64 * 1024 * 1024
#: the longest table list (tree title) written: a TKey's length is 16-bit (ROOT and uproot), the title is in it
MAX_TITLE_BYTES = 32000
_TABLE_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\[(?P<rows>\d+)\]=(?P<leaflist>.*)$")
#: ROOT leaf-list type code <-> numpy type (big-endian, as ROOT stores values)
_CODES = {"B": ">i1", "b": ">u1", "S": ">i2", "s": ">u2", "I": ">i4", "i": ">u4", "L": ">i8", "l": ">u8",
          "F": ">f4", "D": ">f8", "O": "?"}
_CODE_OF = {np.dtype(t).newbyteorder("="): c for c, t in _CODES.items()}
_LEAF_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.]*)(?P<shape>(\[\d+\])*)/(?P<code>[BbSsIiLlFDO])$")


def _leaf(name: str, array: np.ndarray) -> str:
    """The leaf-list entry of one column, e.g. ``cov[3]/F``."""
    return _leaf_of(name, array.dtype, array.shape[1:])


@functools.lru_cache(maxsize=1024)
def _leaf_of(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> str:
    if not _LEAF_RE.match(f"{name}/D"):
        raise ValueError(f"column name {name!r} is not a ROOT leaf name (letters, digits, '_' and '.')")
    code = _CODE_OF.get(dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"column {name!r} has dtype {dtype}, which a ROOT leaf cannot hold")
    return name + "".join(f"[{n}]" for n in shape) + "/" + code


@functools.lru_cache(maxsize=256)  # the same few tables in every file
def _record_dtype(leaflist: str) -> np.dtype:
    """The packed record of a leaf list (``ValueError`` naming the entry that is not one)."""
    fields = []
    for entry in leaflist.split(":") if leaflist else []:
        match = _LEAF_RE.match(entry)
        if match is None:
            raise ValueError(f"leaf {entry!r} is not name[/dims]/type")
        shape = tuple(int(n) for n in re.findall(r"\d+", match["shape"]))
        fields.append((match["name"], np.dtype(_CODES[match["code"]]), shape))
    return np.dtype(fields)


def pack_table(columns: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """``(leaf list, rows)``: the columns (equal first dimension) packed as ``(n, record bytes)`` uint8."""
    arrays = {c: np.asarray(v) for c, v in columns.items()}
    if not arrays:
        raise ValueError("a table needs at least one column")
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths {sorted(lengths)}")
    leaflist = ":".join(_leaf(c, a) for c, a in arrays.items())
    dtype = _record_dtype(leaflist)
    records = np.empty(lengths.pop(), dtype)
    for c, a in arrays.items():
        records[c] = a
    return leaflist, records.view(np.uint8).reshape(len(records), dtype.itemsize)


def unpack_table(leaflist: str, rows: np.ndarray, columns: "Collection[str] | None" = None) -> dict[str, np.ndarray]:
    """The ``columns`` (None: all) of packed ``rows`` (``(n, record bytes)`` uint8), native byte order."""
    dtype = _record_dtype(leaflist)
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != dtype.itemsize or rows.dtype.itemsize != 1:
        raise ValueError(f"rows of shape {rows.shape}, expected (n, {dtype.itemsize}) bytes for the leaf list")
    records = np.ascontiguousarray(rows).view(dtype)[:, 0] if len(rows) else np.zeros(0, dtype)
    names = list(dtype.names or ()) if columns is None else list(columns)
    return {c: records[c].astype(records.dtype[c].base.newbyteorder("=")) for c in names}


def write_trees(path: "str | os.PathLike[str]", trees: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write ``{table: {column: array}}`` as one container TTree (see the module docstring), atomically."""
    packed = {}
    for name, columns in trees.items():
        try:
            if not _TABLE_RE.match(f"{name}[0]="):
                raise ValueError("a table name needs letters, digits and '_' only")
            packed[name] = pack_table(columns)
        except ValueError as exc:
            raise ValueError(f"{path}: tree {name!r}: {exc}") from exc
    title = CONTAINER_TITLE + ";".join(f"{name}[{len(rows)}]={leaflist}" for name, (leaflist, rows) in packed.items())
    if len(title.encode()) > MAX_TITLE_BYTES:
        raise ValueError(f"{path}: the table list of {len(packed)} tables is {len(title.encode())} bytes long, more "
                         f"than the {MAX_TITLE_BYTES} a ROOT tree title can hold (its key length is 16-bit): "
                         "write fewer tables or columns per file")
    baskets: list[list[np.ndarray]] = [[]]
    filled = 0
    for _, rows in packed.values():
        if filled >= BASKET_BYTES:
            baskets.append([])
            filled = 0
        if rows.size:
            baskets[-1].append(rows.reshape(-1))
            filled += rows.size
    with atomic_path(path) as tmp, uproot.recreate(tmp, compression=COMPRESSION) as out:
        tree = out.mktree(CONTAINER_TREE, {CONTAINER_BRANCH: np.uint8}, title=title)
        for parts in baskets:
            if parts:
                data = np.concatenate(parts) if len(parts) > 1 else parts[0]
                for start in range(0, len(data), CHUNK_BYTES):  # one basket per extend
                    tree.extend({CONTAINER_BRANCH: data[start:start + CHUNK_BYTES]})


def _container_tables(title: str) -> dict[str, tuple[str, int, int]]:
    """``{table: (leaflist, first byte, last byte + 1)}`` of a container tree's title (``ValueError`` if damaged)."""
    if not title.startswith(CONTAINER_TITLE):
        raise ValueError(f"title {title[:40]!r} does not start with {CONTAINER_TITLE!r}: not a b2luca table list")
    tables: dict[str, tuple[str, int, int]] = {}
    start = 0
    body = title[len(CONTAINER_TITLE):]
    for entry in body.split(";") if body else []:
        match = _TABLE_RE.match(entry)
        if match is None:
            raise ValueError(f"entry {entry[:80]!r} is not name[rows]=leaflist")
        stop = start + int(match["rows"]) * _record_dtype(match["leaflist"]).itemsize
        tables[match["name"]] = (match["leaflist"], start, stop)
        start = stop
    return tables


def _read_container(path: "str | os.PathLike[str]", t, trees: Mapping[str, "Collection[str] | None"],
                    optional: Collection[str]) -> dict[str, dict[str, np.ndarray]]:
    """The requested tables of a container tree ``t``: one read per range of them (see the module docstring)."""
    try:
        tables = _container_tables(str(t.title or ""))
    except ValueError as exc:
        raise RootReadError(f"{path}: tree {CONTAINER_TREE!r}: corrupt table list ({exc})") from exc
    total = max((stop for _, _, stop in tables.values()), default=0)
    if t.num_entries != total:
        raise RootReadError(f"{path}: tree {CONTAINER_TREE!r}: holds {t.num_entries} bytes, its table list "
                            f"describes {total}")
    wanted = {}
    problems = []
    for name, branches in trees.items():
        if name not in tables:
            if name not in optional:
                problems.append(f"tree {name!r} is missing")
            continue
        known = _record_dtype(tables[name][0]).names or ()
        missing = [b for b in branches if b not in known] if branches is not None else []
        if missing:
            problems.append(f"tree {name!r} lacks branch(es) {missing}")
        wanted[name] = branches
    if problems:
        raise RootReadError(f"{path}: " + "; ".join(problems))
    # one read per range of wanted tables; tables less than a basket apart share it (the gap costs less than a call)
    ranges: list[list[int]] = []
    for start, stop in sorted(tables[name][1:] for name in wanted if tables[name][2] > tables[name][1]):
        if ranges and start - ranges[-1][1] < BASKET_BYTES:
            ranges[-1][1] = max(ranges[-1][1], stop)
        else:
            ranges.append([start, stop])
    data = [(a, t[CONTAINER_BRANCH].array(entry_start=a, entry_stop=b, library="np")) for a, b in ranges]
    out = {}
    for name, branches in wanted.items():
        leaflist, start, stop = tables[name]
        size = _record_dtype(leaflist).itemsize
        rows = np.zeros(0, np.uint8)
        if stop > start:  # the range read that holds it
            rows = next(d[start - a:stop - a] for a, d in data if a <= start and stop <= a + len(d))
        out[name] = unpack_table(leaflist, rows.reshape(-1, size), branches)
    return out


def _read_tree(path: "str | os.PathLike[str]", name: str, t, branches: "Collection[str] | None") -> dict[str, np.ndarray]:
    """The columns of one TTree, packed or one branch per column."""
    title = str(getattr(t, "title", "") or "")
    if title.startswith(PACKED_TITLE) and PACKED_BRANCH in t:
        leaflist = title[len(PACKED_TITLE):]
        try:
            known = _record_dtype(leaflist).names or ()
        except ValueError as exc:
            raise RootReadError(f"{path}: tree {name!r}: corrupt column list ({exc})") from exc
        missing = [b for b in branches if b not in known] if branches is not None else []
        if missing:
            raise RootReadError(f"{path}: tree {name!r} lacks branch(es) {missing}")
        try:
            return unpack_table(leaflist, t[PACKED_BRANCH].array(library="np"), branches)
        except ValueError as exc:
            raise RootReadError(f"{path}: tree {name!r}: corrupt rows ({exc})") from exc
    if branches is None:
        return t.arrays(library="np")
    keys = set(t.keys())
    missing = [b for b in branches if b not in keys]
    if missing:
        raise RootReadError(f"{path}: tree {name!r} lacks branch(es) {missing}")
    return t.arrays(list(branches), library="np")


def read_trees(path: "str | os.PathLike[str]", trees: Mapping[str, "Collection[str] | None"],
               optional: Collection[str] = ()) -> dict[str, dict[str, np.ndarray]]:
    """Read only the given columns of each tree (None: all of them): ``{tree: {column: array}}``.

    A missing tree (unless named in ``optional``: then it is left out of the result), a missing column,
    or a file that is not readable ROOT raises :class:`RootReadError` naming the file and the tree/column.
    The file is opened once, whatever the number of trees.
    """
    try:
        with uproot.open(path, handler=uproot.MemmapSource) as src:
            if CONTAINER_TREE in src:
                return _read_container(path, src[CONTAINER_TREE], trees, optional)
            out = {}
            for tree, branches in trees.items():
                if tree not in src:
                    if tree in optional:
                        continue
                    raise RootReadError(f"{path}: tree {tree!r} is missing")
                out[tree] = _read_tree(path, tree, src[tree], branches)
            return out
    except RootReadError:
        raise
    except Exception as exc:  # unreadable / not ROOT
        raise RootReadError(f"{path}: cannot read trees {list(trees)} ({exc})") from exc
