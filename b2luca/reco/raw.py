"""Raw-data file layout of the toy detector and :func:`read_raw`.

One ROOT file (written with uproot) holds flat tables, one row per hit (each a packed-table TTree, see
:mod:`b2luca.rootio`; the table below lists each table's columns); ``event`` numbers a run's
events, ``cand`` is the index of the track candidate inside the event as an idealised (MC-matched)
track finder would give it -- the raw data carry no true positions or parameters.

==============  ===================================================================================
tree            branches (dtype)
==============  ===================================================================================
``event``       event (i8), n_cand (i4), exp (i4), run (i4)
``pxd``         event (i8), cand (i2), sensor (i4, VxdID), pixel (i4, toy pixel id), u, v (f8, cluster
                position in mm in the sensor's local frame), charge (f4, ADC)
``svd``         event, cand, sensor, u, v (as pxd), time (f4, ns), charge (f4, ADC)
``cdc``         event, cand, layer (i2, 0..55), wire (i2), board (i2), tdc (f4, ns), adc (f4),
                lr (i1, left/right sign from the track finder: drift distance sign)
``ecl``         event, cand (i2, -1 if not matched), crystal (i4), amplitude (f4)
``pxd_digits``  event, sensor (i4), pixel (i4), adc (f4)   (random_calib: pixel occupancy)
``ecl_full``    event, crystal (i4), amplitude (f4): detailed ECL showers + beam background, all crystal
                hits above the readout threshold (b2luca/sim/ecl_showers.py; mumu, hadron, radmumu)
``pxd_bkg``     event, sensor (i4), pixel (i4), adc (f4): PXD beam background, clustered, ~1 % occupancy
                (b2luca/sim/pxd_background.py; random_calib)
==============  ===================================================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection, Iterable, Mapping

import numpy as np

from ..rootio import RootReadError, read_trees, write_trees
from ..errors import RawDataError

RAW_BRANCHES: dict[str, dict[str, str]] = {
    "event": {"event": "i8", "n_cand": "i4", "exp": "i4", "run": "i4"},
    "pxd": {"event": "i8", "cand": "i2", "sensor": "i4", "pixel": "i4", "u": "f8", "v": "f8", "charge": "f4"},
    "svd": {"event": "i8", "cand": "i2", "sensor": "i4", "u": "f8", "v": "f8", "time": "f4", "charge": "f4"},
    "cdc": {"event": "i8", "cand": "i2", "layer": "i2", "wire": "i2", "board": "i2", "tdc": "f4", "adc": "f4",
            "lr": "i1"},
    "ecl": {"event": "i8", "cand": "i2", "crystal": "i4", "amplitude": "f4"},
    "pxd_digits": {"event": "i8", "sensor": "i4", "pixel": "i4", "adc": "f4"},
    "ecl_full": {"event": "i8", "crystal": "i4", "amplitude": "f4"},
    "pxd_bkg": {"event": "i8", "sensor": "i4", "pixel": "i4", "adc": "f4"},
}
#: trees added after the first data were written (issue 16): a raw file without them reads as empty trees
OPTIONAL_TREES = ("ecl_full", "pxd_bkg")


def write_raw(path: "str | os.PathLike[str]", trees: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Write raw trees as TTrees (all of RAW_BRANCHES; missing trees are written empty) atomically."""
    path = Path(path)
    columns: dict[str, dict[str, np.ndarray]] = {}
    for tree, branches in RAW_BRANCHES.items():
        cols = trees.get(tree, {})
        missing = [b for b in branches if b not in cols]
        if cols and missing:
            raise RawDataError(f"{path}: tree {tree!r} lacks branch(es) {missing}")
        columns[tree] = {b: np.asarray(cols.get(b, np.zeros(0)), dtype=dt) for b, dt in branches.items()}
    write_trees(path, columns)


def read_raw(paths: "Iterable[str | os.PathLike[str]] | str | os.PathLike[str]",
             trees: "Collection[str] | None" = None) -> dict[str, dict[str, np.ndarray]]:
    """Read and concatenate raw files (or directories: all ``*.root`` below, sorted).

    Returns ``{tree: {branch: array}}`` for every tree of :data:`RAW_BRANCHES` (or only those of ``trees``, and
    ``event``: a reader that needs a few trees does not open and decompress the others); every tree also gets
    ``gevent`` (int64), a global event index unique across all files read (the ``event`` tree row).
    Track candidates are identified by (gevent, cand).
    """
    wanted = {t: b for t, b in RAW_BRANCHES.items() if trees is None or t == "event" or t in trees}
    unknown = sorted(set(trees or ()) - set(RAW_BRANCHES))
    if unknown:
        raise ValueError(f"read_raw: unknown raw tree(s) {unknown}; expected some of {list(RAW_BRANCHES)}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(sorted(p.rglob("*.root")) if p.is_dir() else [p])
    out: dict[str, dict[str, list]] = {t: {b: [] for b in (*br, "gevent")} for t, br in wanted.items()}
    offset = 0
    for f in files:
        try:
            data = read_trees(f, wanted, optional=OPTIONAL_TREES)
        except RootReadError as exc:
            raise RawDataError(f"{exc} (not a usable raw file)") from exc
        for t in (t for t in OPTIONAL_TREES if t in wanted):
            data.setdefault(t, {b: np.zeros(0, dt) for b, dt in RAW_BRANCHES[t].items()})
        ev = data["event"]["event"]
        for tree, cols in data.items():
            if tree == "event":
                g = offset + np.arange(ev.size, dtype=np.int64)
            else:
                pos = np.searchsorted(ev, cols["event"])
                if cols["event"].size and (np.any(pos >= ev.size) or np.any(ev[np.minimum(pos, ev.size - 1)] != cols["event"])):
                    raise RawDataError(f"{f}: tree {tree!r} has hits of events missing from the event tree")
                g = offset + pos.astype(np.int64)
            for b, a in cols.items():
                out[tree][b].append(a)
            out[tree]["gevent"].append(g)
        offset += ev.size
    return {t: {b: (np.concatenate(v) if v else np.zeros(0, RAW_BRANCHES[t].get(b, "i8"))) for b, v in cols.items()}
            for t, cols in out.items()}


def first_events(raw: Mapping[str, Mapping[str, np.ndarray]], n: int) -> dict[str, dict[str, np.ndarray]]:
    """The rows of :func:`read_raw`'s ``raw`` that belong to its first ``n`` events (``gevent`` < n), every tree."""
    return {t: {b: v[cols["gevent"] < n] for b, v in cols.items()} for t, cols in raw.items()}
