"""Writing ROOT files of flat numpy columns as TTrees, atomically (temporary name, then rename).

uproot >= 5.7 writes an RNTuple for ``file[name] = {...}``; Belle II raw and cDST files are TTrees, so
trees are created explicitly with ``mktree``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import uproot


def _branch_type(array: np.ndarray) -> np.dtype:
    return np.dtype((array.dtype, array.shape[1:])) if array.ndim > 1 else array.dtype


def write_trees(path: "str | os.PathLike[str]", trees: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write ``{tree: {branch: column}}`` as TTrees (columns of a tree share their first dimension)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with uproot.recreate(tmp) as out:
            for name, columns in trees.items():
                arrays = {b: np.ascontiguousarray(np.asarray(v)) for b, v in columns.items()}
                lengths = {len(a) for a in arrays.values()}
                if len(lengths) > 1:
                    raise ValueError(f"{path}: tree {name!r} has branches of different lengths {sorted(lengths)}")
                tree = out.mktree(name, {b: _branch_type(a) for b, a in arrays.items()})
                if lengths and lengths.pop() > 0:
                    tree.extend(arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; data files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
