"""cDST production: reconstruct one run's raw data with the constants in force and write cDST files.

Layout: ``<cdst_run_dir>/<data_tag>/cdst_<n>.root`` for every ``<raw_run_dir>/<data_tag>/raw_<n>.root``,
and ``<cdst_run_dir>/manifest.json`` (written last).  A cDST file holds flat TTrees in three *branch
groups*, each computed from the raw file and a set of payloads:

``hits`` (payloads SVDTimeOffsets, CDCTimeZeros)
    the raw trees copied unchanged (``event``, ``pxd``, ``svd``, ``cdc``, ``pxd_digits``; same
    branches as raw, so :func:`b2luca.reco.raw.read_raw` reads a cDST too) plus the calibrated hit
    times in ``svd.time_corrected`` [ns] and ``cdc.drift_time`` [ns].
``tracks`` (payloads VXDAlignment, CDCAlignment, CDCTimeZeros, PXDMasks; and the fit options)
    ``tracks``: one row per fitted track: ``event``, ``cand``, perigee ``d0 phi0 omega z0 tanl``,
    covariance ``cov_ij`` (i <= j, 15 columns), ``chi2``, ``ndf``, ``p``, ``charge``, ``n_pxd``,
    ``n_svd``, ``n_cdc``; ``track_hits``: the hits -> track relation, one row per measurement:
    ``track`` (row in ``tracks``), ``det`` (0 pxd, 1 svd, 2 cdc), ``hit`` (row in that hit tree),
    ``kind`` (0 u, 1 v, 2 drift), ``residual``, ``sigma`` [mm].
``ecl`` (payload ECLCrystalEnergy)
    ``ecl``: the raw ECL hits plus ``energy`` [GeV]; ``ecl_clusters``: one row per track-matched
    cluster (``event``, ``cand``, ``energy``, ``n_crystals``, ``seed_crystal``, ``seed_energy``).

The manifest records per group the payloads it used (name -> database directory and revision, or
null for the nominal default), and per file the raw file's size/mtime and what was done to each
group ("computed" or "copied").  A repeated production recomputes only the groups whose payloads
changed (or everything for a file whose raw input changed) and copies the other trees from the
existing cDST file.  Every file is written to a temporary name and renamed; the manifest last.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .iov import ExpRun
from .atomic import write_json_atomic
from .rootio import read_trees, write_trees
from .errors import ProductionError, RootReadError
from .reco.robust import FIT_ITERATIONS, FIT_SCATTERING, fit_robust

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

#: branch group -> payloads it depends on
GROUP_PAYLOADS: dict[str, tuple[str, ...]] = {
    "hits": ("SVDTimeOffsets", "CDCTimeZeros"),
    "tracks": ("VXDAlignment", "CDCAlignment", "CDCTimeZeros", "PXDMasks"),
    "ecl": ("ECLCrystalEnergy",),
}
#: branch group -> trees it owns in a cDST file
GROUP_TREES: dict[str, tuple[str, ...]] = {
    "hits": ("event", "pxd", "svd", "cdc", "pxd_digits"),
    "tracks": ("tracks", "track_hits"),
    "ecl": ("ecl", "ecl_clusters"),
}
_COV_INDEX = [(i, j) for i in range(5) for j in range(i, 5)]
_PARAM_NAMES = ("d0", "phi0", "omega", "z0", "tanl")


# --- payload fingerprints ---------------------------------------------------------------------------
def _fingerprint(chain, name: str, exprun: ExpRun) -> dict[str, Any] | None:
    """``{"database": dir, "revision": rev}`` of the payload in force, None for the nominal default."""
    entry = chain.lookup(name, exprun)
    if entry is None:
        return None
    return {"database": str(Path(entry.path).parent.resolve()), "revision": entry.revision}


def _group_fingerprints(chain, exprun: ExpRun, scattering: bool = FIT_SCATTERING) -> dict[str, dict[str, Any]]:
    cache: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for group, names in GROUP_PAYLOADS.items():
        out[group] = {}
        for name in names:
            if name not in cache:
                cache[name] = _fingerprint(chain, name, exprun)
            out[group][name] = cache[name]
    out["tracks"]["_fit"] = {"scattering": bool(scattering), "max_iterations": FIT_ITERATIONS}
    return out


def _raw_identity(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def read_manifest(cdst_run_dir: Path) -> dict[str, Any] | None:
    """The run's manifest, or None when missing; an unreadable manifest raises ProductionError."""
    path = Path(cdst_run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProductionError(f"{path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or "groups" not in manifest or "files" not in manifest:
        raise ProductionError(f"{path}: not a cDST manifest (keys 'groups' and 'files' expected)")
    return manifest


def manifest_is_current(cdst_run_dir: Path, chain, exprun: ExpRun, scattering: bool = FIT_SCATTERING) -> bool:
    """True iff the manifest exists, its files exist, and every payload it records is still the one
    ``chain.lookup`` returns for ``exprun`` (and the tracks were fitted with the same fit options)."""
    try:
        manifest = read_manifest(Path(cdst_run_dir))
    except ProductionError:
        return False
    if manifest is None or manifest.get("format_version") != FORMAT_VERSION:
        return False
    if manifest.get("groups") != _group_fingerprints(chain, exprun, scattering):
        return False
    for files in manifest["files"].values():
        for record in files:
            if not (Path(cdst_run_dir) / record["cdst"]).is_file():
                return False
    return True


# --- I/O ------------------------------------------------------------------------------------------
def _read_trees(path: Path, trees: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Every branch of ``trees`` in a cDST file; a missing file/tree raises ProductionError naming it."""
    try:
        return read_trees(path, {tree: None for tree in trees})
    except RootReadError as exc:
        raise ProductionError(str(exc)) from exc


def _write_trees_atomic(path: Path, trees: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    write_trees(path, trees)  # TTrees, temporary name then rename


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, indent=1)


def _strip(tree: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A raw tree as read by read_raw, without the reader's ``gevent`` column."""
    return {k: v for k, v in tree.items() if k != "gevent"}


# --- the three groups -----------------------------------------------------------------------------
def _group_hits(raw: Mapping[str, Mapping[str, np.ndarray]], constants) -> dict[str, dict[str, np.ndarray]]:
    from .reco.measurements import cdc_drift_time, svd_time

    svd = _strip(raw["svd"])
    svd["time_corrected"] = svd_time(raw["svd"], constants).astype(np.float32)
    cdc = _strip(raw["cdc"])
    cdc["drift_time"] = cdc_drift_time(raw["cdc"], constants).astype(np.float32)
    return {"event": _strip(raw["event"]), "pxd": _strip(raw["pxd"]), "svd": svd, "cdc": cdc,
            "pxd_digits": _strip(raw["pxd_digits"])}


def _empty_tracks() -> dict[str, dict[str, np.ndarray]]:
    tracks: dict[str, np.ndarray] = {"event": np.zeros(0, np.int64), "cand": np.zeros(0, np.int16)}
    tracks.update({n: np.zeros(0) for n in _PARAM_NAMES})
    tracks.update({f"cov_{i}{j}": np.zeros(0) for i, j in _COV_INDEX})
    tracks.update(chi2=np.zeros(0), ndf=np.zeros(0, np.int32), p=np.zeros(0), charge=np.zeros(0, np.int8),
                  n_pxd=np.zeros(0, np.int32), n_svd=np.zeros(0, np.int32), n_cdc=np.zeros(0, np.int32))
    rel: dict[str, np.ndarray] = {"track": np.zeros(0, np.int32), "det": np.zeros(0, np.int8), "hit": np.zeros(0, np.int64),
           "kind": np.zeros(0, np.int8), "residual": np.zeros(0), "sigma": np.zeros(0)}
    return {"tracks": tracks, "track_hits": rel}


def _group_tracks(raw: Mapping[str, Mapping[str, np.ndarray]], constants,
                  scattering: bool = FIT_SCATTERING) -> dict[str, dict[str, np.ndarray]]:
    from .reco import helix as H
    from .reco.measurements import build_measurements

    n_hits = sum(int(raw[d]["event"].size) for d in ("pxd", "svd", "cdc"))
    if n_hits == 0:
        return _empty_tracks()
    meas = build_measurements(raw, constants)
    if meas.n_tracks == 0:
        return _empty_tracks()
    fit = fit_robust(meas, constants, scattering=scattering)
    meas = fit.meas
    assert fit.residual is not None  # requested by default
    nt = meas.n_tracks
    gevent = meas.track_key[:, 0]
    tracks: dict[str, np.ndarray] = {"event": np.asarray(raw["event"]["event"])[gevent].astype(np.int64),
                                     "cand": meas.track_key[:, 1].astype(np.int16)}
    for i, name in enumerate(_PARAM_NAMES):
        tracks[name] = fit.params[:, i].astype(np.float64)
    for i, j in _COV_INDEX:
        tracks[f"cov_{i}{j}"] = fit.cov[:, i, j].astype(np.float64)
    counts = np.zeros((nt, 3), np.int64)
    np.add.at(counts, (meas.track, meas.det.astype(np.int64)), 1)
    tracks.update(chi2=fit.chi2.astype(np.float64), ndf=fit.ndf.astype(np.int32), p=H.momentum(fit.params),
                  charge=np.sign(fit.params[:, 2]).astype(np.int8), n_pxd=(counts[:, 0] // 2).astype(np.int32),
                  n_svd=(counts[:, 1] // 2).astype(np.int32), n_cdc=counts[:, 2].astype(np.int32))
    rel: dict[str, np.ndarray] = {"track": meas.track.astype(np.int32), "det": meas.det.astype(np.int8), "hit": meas.hit.astype(np.int64),
           "kind": meas.kind.astype(np.int8), "residual": fit.residual.astype(np.float64),
           "sigma": meas.sigma.astype(np.float64)}
    return {"tracks": tracks, "track_hits": rel, "_failed_fits": {"n": np.array([int(fit.failed)])}}


def ecl_clusters(event: np.ndarray, cand: np.ndarray, crystal: np.ndarray, energy: np.ndarray) -> dict[str, np.ndarray]:
    """Track-matched clusters: hits grouped by (event, cand >= 0); energy sum, size and seed crystal."""
    event, cand = np.asarray(event, np.int64), np.asarray(cand, np.int64)
    crystal, energy = np.asarray(crystal, np.int64), np.asarray(energy, float)
    m = cand >= 0
    if not m.any():
        return {"event": np.zeros(0, np.int64), "cand": np.zeros(0, np.int16), "energy": np.zeros(0),
                "n_crystals": np.zeros(0, np.int32), "seed_crystal": np.zeros(0, np.int32), "seed_energy": np.zeros(0)}
    ev, ca, cr, en = event[m], cand[m], crystal[m], energy[m]
    order = np.lexsort((-en, ca, ev))  # by event, cand, then descending energy: the seed comes first
    ev, ca, cr, en = ev[order], ca[order], cr[order], en[order]
    first = np.flatnonzero(np.r_[True, (ev[1:] != ev[:-1]) | (ca[1:] != ca[:-1])])
    return {"event": ev[first], "cand": ca[first].astype(np.int16), "energy": np.add.reduceat(en, first),
            "n_crystals": np.diff(np.r_[first, ev.size]).astype(np.int32), "seed_crystal": cr[first].astype(np.int32),
            "seed_energy": en[first]}


def _group_ecl(raw: Mapping[str, Mapping[str, np.ndarray]], constants) -> dict[str, dict[str, np.ndarray]]:
    from .reco.measurements import ecl_energy

    ecl = _strip(raw["ecl"])
    ecl["energy"] = ecl_energy(raw["ecl"], constants).astype(np.float64)
    return {"ecl": ecl, "ecl_clusters": ecl_clusters(ecl["event"], ecl["cand"], ecl["crystal"], ecl["energy"])}


_BUILDERS: dict[str, Callable[..., dict[str, dict[str, np.ndarray]]]] = {"hits": _group_hits, "tracks": _group_tracks, "ecl": _group_ecl}


# --- the run --------------------------------------------------------------------------------------
def _raw_files(raw_run_dir: Path) -> dict[str, list[Path]]:
    if not raw_run_dir.is_dir():
        raise ProductionError(f"raw run directory {raw_run_dir} does not exist")
    tags = {}
    for tag_dir in sorted(p for p in raw_run_dir.iterdir() if p.is_dir()):
        files = sorted(tag_dir.glob("raw_*.root"), key=lambda p: (len(p.name), p.name))
        if files:
            tags[tag_dir.name] = files
    if not tags:
        raise ProductionError(f"{raw_run_dir}: no <data_tag>/raw_*.root files")
    return tags


def _cdst_name(raw_file: Path) -> str:
    return "cdst_" + raw_file.name[len("raw_"):]


def produce_run(raw_run_dir: Path, cdst_run_dir: Path, chain, exprun: ExpRun,
                scattering: bool = FIT_SCATTERING) -> dict[str, Any]:
    """Reconstruct every raw file of one run (all data tags) into cDST files; see the module docstring.

    Returns a JSON-able summary: ``tags``, ``files``, ``tracks`` (per tag), ``seconds``, ``payloads``
    (name -> revision or "nominal"), ``computed`` / ``copied`` (group -> number of files), and
    ``failed_fits`` (candidates whose fit failed and that are left out of ``tracks``).
    """
    from .reco.measurements import load_constants
    from .reco.raw import read_raw

    start = time.perf_counter()
    raw_run_dir, cdst_run_dir = Path(raw_run_dir), Path(cdst_run_dir)
    tags = _raw_files(raw_run_dir)
    fingerprints = _group_fingerprints(chain, exprun, scattering)
    try:
        old = read_manifest(cdst_run_dir)
    except ProductionError as exc:  # never half-written (atomic), so foreign or damaged: start afresh
        logging.getLogger(__name__).warning("%s; producing the run from scratch", exc)
        old = None
    if old is not None and old.get("format_version") != FORMAT_VERSION:
        old = None
    old_files = {(tag, rec["raw_name"]): rec for tag, recs in (old or {}).get("files", {}).items() for rec in recs}
    stale = {g for g in GROUP_PAYLOADS if old is None or old.get("groups", {}).get(g) != fingerprints[g]}
    constants = None
    files_out: dict[str, list[dict[str, Any]]] = {}
    computed = {g: 0 for g in GROUP_PAYLOADS}
    copied = {g: 0 for g in GROUP_PAYLOADS}
    n_tracks: dict[str, int] = {}
    failed_fits = 0
    for tag, raws in tags.items():
        files_out[tag] = []
        n_tracks[tag] = 0
        for raw_file in raws:
            identity = _raw_identity(raw_file)
            cdst_rel = f"{tag}/{_cdst_name(raw_file)}"
            cdst_file = cdst_run_dir / cdst_rel
            previous = old_files.get((tag, raw_file.name))
            reusable = (previous is not None and previous.get("raw") == identity and cdst_file.is_file())
            todo = set(GROUP_PAYLOADS) if not reusable else stale
            if not todo:  # everything current: the file stays as it is
                assert previous is not None
                for g in GROUP_PAYLOADS:
                    copied[g] += 1
                n_tracks[tag] += int(previous.get("tracks", 0))
                files_out[tag].append({**previous, "groups": {g: "kept" for g in GROUP_PAYLOADS}})
                continue
            trees: dict[str, dict[str, np.ndarray]] = {}
            keep = [g for g in GROUP_PAYLOADS if g not in todo]
            if keep:
                trees.update(_read_trees(cdst_file, tuple(t for g in keep for t in GROUP_TREES[g])))
            if todo:
                if constants is None:
                    constants = load_constants(chain, exprun)
                raw = read_raw([raw_file])
                for group in GROUP_PAYLOADS:
                    if group in todo:
                        trees.update(_BUILDERS[group](raw, constants, scattering) if group == "tracks"
                                     else _BUILDERS[group](raw, constants))
                failed = trees.pop("_failed_fits", None)
                if failed is not None:
                    failed_fits += int(failed["n"][0])
            if todo:
                ordered = {t: trees[t] for g in GROUP_PAYLOADS for t in GROUP_TREES[g]}
                _write_trees_atomic(cdst_file, ordered)
            for g in GROUP_PAYLOADS:
                (computed if g in todo else copied)[g] += 1
            ntrk = int(trees["tracks"]["event"].size)
            n_tracks[tag] += ntrk
            files_out[tag].append({"raw_name": raw_file.name, "raw_path": str(raw_file.resolve()), "raw": identity,
                                   "cdst": cdst_rel, "tracks": ntrk,
                                   "groups": {g: ("computed" if g in todo else "copied") for g in GROUP_PAYLOADS}})
    # files of tags/raw files that disappeared are not listed any more (their cDST files are left alone)
    seconds = time.perf_counter() - start
    history = list((old or {}).get("history", []))
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "computed": computed,
                    "copied": copied, "failed_fits": failed_fits, "seconds": round(seconds, 3)})
    manifest = {"format_version": FORMAT_VERSION, "exprun": exprun.as_list(), "raw_run_dir": str(raw_run_dir.resolve()),
                "groups": fingerprints, "group_trees": {g: list(t) for g, t in GROUP_TREES.items()},
                "files": files_out, "history": history}
    _write_json_atomic(cdst_run_dir / MANIFEST, manifest)
    payloads = {}
    for used in fingerprints.values():
        for name, fp in used.items():
            if not name.startswith("_"):
                payloads[name] = "nominal" if fp is None else fp["revision"]
    return {"tags": sorted(tags), "files": sum(len(v) for v in files_out.values()), "tracks": n_tracks,
            "seconds": round(time.perf_counter() - start, 3), "payloads": payloads, "computed": computed,
            "copied": copied, "failed_fits": failed_fits}


def read_cdst(paths, trees: tuple[str, ...] = ("tracks",)) -> dict[str, dict[str, np.ndarray]]:
    """Concatenate ``trees`` of cDST files (or directories: all ``cdst_*.root`` below, sorted).

    Row indices stored in a file (``track_hits.track``, ``.hit``) refer to that file's trees.
    """
    files: list[Path] = []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        p = Path(p)
        files.extend(sorted(p.rglob("cdst_*.root")) if p.is_dir() else [p])
    parts: dict[str, list[dict[str, np.ndarray]]] = {t: [] for t in trees}
    for f in files:
        data = _read_trees(f, trees)
        for t in trees:
            parts[t].append(data[t])
    out: dict[str, dict[str, np.ndarray]] = {}
    for t in trees:
        if not parts[t]:
            out[t] = {}
            continue
        keys = parts[t][0].keys()
        out[t] = {k: np.concatenate([d[k] for d in parts[t]]) for k in keys}
    return out


__all__ = ["FORMAT_VERSION", "GROUP_PAYLOADS", "GROUP_TREES", "MANIFEST", "ProductionError", "ecl_clusters",
           "manifest_is_current", "produce_run", "read_cdst", "read_manifest"]
