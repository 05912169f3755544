"""ROOT files of tables of numpy columns: written as TTrees atomically (temporary name, then rename), and
read back with errors that name the file, the tree and the column.

**Layout (packed tables).**  Each table ``{column: array}`` (columns share their first dimension) is one
TTree with a single branch ``rows``: a fixed-size ``unsigned char`` array holding one packed record per
row -- the physical layout of a ROOT leaf-list branch.  The columns are described by the tree's title,
``b2luca-rows:`` followed by the ROOT leaf list, e.g. ``b2luca-rows:event/L:cand/S:u/D:cov[3]/F`` (types
B b S s I i L l F D O as in ``TTree::Branch``; values big-endian, as ROOT stores them; ``[n]`` a fixed-size
array column).  uproot reads it as a ``(rows, record bytes)`` array that :func:`read_trees` views as the
columns.

Why: uproot's fixed cost per file is per TTree (~0.6 ms to read its metadata) and per TBranch (~0.4 ms
more to deserialise, interpret, compress and write each), so a file of many small per-column branches
cost 20-25 ms however few rows it held; a packed table costs one branch.  The price: a reader of a few
columns decompresses its whole table, and rows compress less well than columns (zlib: +5 % bytes for a
60-event raw file, +36 % for 1,500 events; ``benchmarks/rootio_bench.py``).

Files of the earlier layout (one branch per column, written by b2luca before issue 15) are read as well.

**Compression.**  Zstandard level 1 (ROOT's algorithm 5, read by ROOT >= 6.20 and by uproot through its
``cramjam`` dependency): on a cDST file it writes 4x and reads 1.5x faster than ROOT's historical default
ZLIB level 1 at the same size (5.2 MB for a 1,500-event di-muon cDST file); the 8-run demo's cDST
production took 18.6 instead of 22.3 CPU-s (issue 15; small files gain nothing: their cost is per file).  Files written with any compression are read.

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
    """Write ``{tree: {column: array}}`` as packed-table TTrees (see the module docstring), atomically."""
    packed = {}
    for name, columns in trees.items():
        try:
            packed[name] = pack_table(columns)
        except ValueError as exc:
            raise ValueError(f"{path}: tree {name!r}: {exc}") from exc
    with atomic_path(path) as tmp, uproot.recreate(tmp, compression=COMPRESSION) as out:
        for name, (leaflist, rows) in packed.items():
            tree = out.mktree(name, {PACKED_BRANCH: np.dtype((np.uint8, rows.shape[1:]))},
                              title=PACKED_TITLE + leaflist)
            if len(rows):
                tree.extend({PACKED_BRANCH: rows})


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
