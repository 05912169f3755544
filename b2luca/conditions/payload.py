"""Payload files: named numeric arrays in a ROOT file, written and read with uproot.

Each array ``key`` is stored as a TTree (not an RNTuple) ``key`` with one branch ``value`` whose entries run over the
array's first axis (higher axes become fixed-size branch dimensions).  A ``TObjString`` named
``b2luca_meta`` keeps each array's dtype and exact shape (0-d arrays included), so a round trip gives
identical arrays.  The content checksum covers names, dtypes, shapes and bytes, not the ROOT container
(ROOT files carry timestamps and UUIDs, so two writes of the same arrays differ byte-wise).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import uproot

from ..atomic import atomic_path
from ..errors import PayloadError

META_KEY = "b2luca_meta"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ALLOWED_KINDS = "biuf"  # bool, signed, unsigned, float


def _normalise(data: Mapping[str, "np.typing.ArrayLike"]) -> dict[str, np.ndarray]:
    if not data:
        raise PayloadError("a payload needs at least one named array")
    arrays: dict[str, np.ndarray] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not _KEY_RE.match(key) or key == META_KEY:
            raise PayloadError(f"payload array name {key!r} must be an identifier (and not {META_KEY!r})")
        array = np.asarray(value)
        if not array.flags.c_contiguous:
            array = array.copy(order="C")
        if array.dtype.kind not in _ALLOWED_KINDS:
            raise PayloadError(f"payload array {key!r}: dtype {array.dtype} is not numeric or bool")
        arrays[key] = array
    return arrays


def payload_checksum(data: Mapping[str, "np.typing.ArrayLike"]) -> str:
    """SHA-256 over the sorted array names, dtypes, shapes and contents."""
    digest = hashlib.sha256()
    for key, array in sorted(_normalise(data).items()):
        digest.update(key.encode())
        digest.update(array.dtype.newbyteorder("<").str.encode())
        digest.update(repr(array.shape).encode())
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def write_payload(path: "str | os.PathLike[str]", data: Mapping[str, "np.typing.ArrayLike"]) -> str:
    """Write ``data`` to the ROOT file ``path`` atomically; return the content checksum."""
    arrays = _normalise(data)
    meta: dict[str, Any] = {key: {"dtype": a.dtype.str, "shape": list(a.shape)} for key, a in arrays.items()}
    checksum = meta["__checksum__"] = payload_checksum(arrays)
    with atomic_path(path) as tmp, uproot.recreate(tmp) as out:
        out[META_KEY] = json.dumps(meta, sort_keys=True)
        for key, array in arrays.items():
            stored = array.reshape(1) if array.ndim == 0 else array
            # mktree, not ``out[key] = {...}``: uproot >= 5.7 writes an RNTuple for the latter.
            kind = np.dtype((stored.dtype, stored.shape[1:])) if stored.ndim > 1 else stored.dtype
            tree = out.mktree(key, {"value": kind})
            if len(stored):
                tree.extend({"value": stored})
    return checksum


def read_payload(path: "str | os.PathLike[str]") -> dict[str, np.ndarray]:
    """Read a payload file written by :func:`write_payload` back into named arrays."""
    path = Path(path)
    try:
        return read_payload_and_meta(path)[0]
    except FileNotFoundError:
        raise
    except Exception as exc:  # uproot raises many kinds for a damaged file
        raise PayloadError(f"{path}: not a readable b2luca payload file ({exc})") from exc


def read_payload_and_meta(path: "str | os.PathLike[str]") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The named arrays and the metadata (dtypes, shapes, ``__checksum__``) of a payload file, in one
    opening of the file (memory-mapped); uproot's own exceptions pass through."""
    with uproot.open(path, handler=uproot.MemmapSource) as source:
        meta = json.loads(str(source[META_KEY]))
        arrays: dict[str, np.ndarray] = {}
        for key, info in meta.items():
            if key.startswith("__"):
                continue
            values = source[key]["value"].array(library="np")
            arrays[key] = np.asarray(values, dtype=np.dtype(info["dtype"])).reshape(info["shape"])
    return arrays, meta


def read_checksum(path: "str | os.PathLike[str]") -> str:
    """The content checksum stored in a payload file (recomputed when absent)."""
    try:
        with uproot.open(path) as source:
            meta = json.loads(str(source[META_KEY]))
        if "__checksum__" in meta:
            return str(meta["__checksum__"])
    except Exception as exc:
        raise PayloadError(f"{path}: not a readable b2luca payload file ({exc})") from exc
    return payload_checksum(read_payload(path))
