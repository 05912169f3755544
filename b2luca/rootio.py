"""ROOT files of flat numpy columns: written as TTrees atomically (temporary name, then rename), and read
back branch by branch with errors that name the file, tree and branch.

uproot >= 5.7 writes an RNTuple for ``file[name] = {...}``; Belle II raw and cDST files are TTrees, so
trees are created explicitly with ``mktree``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping

import numpy as np
import uproot

from .atomic import atomic_path
from .errors import RootReadError


def _branch_type(array: np.ndarray) -> np.dtype:
    return np.dtype((array.dtype, array.shape[1:])) if array.ndim > 1 else array.dtype


def write_trees(path: "str | os.PathLike[str]", trees: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write ``{tree: {branch: column}}`` as TTrees (columns of a tree share their first dimension)."""
    with atomic_path(path) as tmp, uproot.recreate(tmp) as out:
        for name, columns in trees.items():
            arrays = {b: np.ascontiguousarray(np.asarray(v)) for b, v in columns.items()}
            lengths = {len(a) for a in arrays.values()}
            if len(lengths) > 1:
                raise ValueError(f"{path}: tree {name!r} has branches of different lengths {sorted(lengths)}")
            tree = out.mktree(name, {b: _branch_type(a) for b, a in arrays.items()})
            if lengths and lengths.pop() > 0:
                tree.extend(arrays)


def read_trees(path: "str | os.PathLike[str]", trees: Mapping[str, "Collection[str] | None"]
               ) -> dict[str, dict[str, np.ndarray]]:
    """Read only the given ``branches`` of each tree (None: all of them): ``{tree: {branch: array}}``.

    A missing tree or branch, or a file that is not readable ROOT, raises :class:`RootReadError` naming
    the file and the tree/branch.
    """
    try:
        with uproot.open(path) as src:
            out = {}
            for tree, branches in trees.items():
                if tree not in src:
                    raise RootReadError(f"{path}: tree {tree!r} is missing")
                t = src[tree]
                if branches is None:
                    out[tree] = t.arrays(library="np")
                    continue
                missing = [b for b in branches if b not in t.keys()]
                if missing:
                    raise RootReadError(f"{path}: tree {tree!r} lacks branch(es) {missing}")
                out[tree] = t.arrays(list(branches), library="np")
            return out
    except RootReadError:
        raise
    except Exception as exc:  # unreadable / not ROOT
        raise RootReadError(f"{path}: cannot read trees {list(trees)} ({exc})") from exc
