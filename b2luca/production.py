"""cDST production: reconstruct one run's raw data with the constants in force and write cDST files.

Layout: ``<cdst_run_dir>/<data_tag>/cdst_<n>.root`` for every ``<raw_run_dir>/<data_tag>/raw_<n>.root``,
and ``<cdst_run_dir>/manifest.json`` (written last).  A cDST file holds flat tables (packed-table TTrees, :mod:`b2luca.rootio`) in three *branch
groups*, each computed from the raw file and a set of payloads:

``hits`` (payloads SVDTimeOffsets, CDCTimeZeros)
    the raw trees copied unchanged (``event``, ``pxd``, ``svd``, ``cdc``, ``pxd_digits``, ``ecl_full``; same
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

:func:`produce_runs` reconstructs several runs in one call with a cost that grows with the data, not
with the number of runs or files: the constants are read once per distinct set of payloads (not once
per run), and the track candidates of all files of one data tag that share those constants are fitted
in one batch (a fit call has a fixed cost that small files would otherwise pay each).  The output is
the same per-run layout; :func:`produce_run` is the one-run case.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .iov import ExpRun
from .atomic import write_json_atomic_many
from .rootio import read_trees, write_trees
from .errors import ProductionError, RootReadError
from .reco import helix as H
from .reco.geometry import nominal_geometry
from .reco.measurements import (PAYLOAD_NAMES, Constants, Measurements, build_measurements, cdc_drift_time, ecl_energy,
                                load_constants, svd_time)
from .reco.raw import read_raw
from .reco.robust import FIT_ITERATIONS, FIT_SCATTERING, RobustFit, fit_robust

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
    "hits": ("event", "pxd", "svd", "cdc", "pxd_digits", "ecl_full"),
    "tracks": ("tracks", "track_hits"),
    "ecl": ("ecl", "ecl_clusters"),
}
#: the raw trees production reads (the hit trees it copies, ``ecl`` for the ECL group): not ``pxd_bkg``
RAW_TREES_READ = ("event", "pxd", "svd", "cdc", "ecl", "pxd_digits", "ecl_full")
_COV_INDEX = [(i, j) for i in range(5) for j in range(i, 5)]
_PARAM_NAMES = ("d0", "phi0", "omega", "z0", "tanl")


# --- payload fingerprints ---------------------------------------------------------------------------
def _resolved_dir(directory: Path, cache: dict[Path, Path] | None) -> Path:
    """``directory.resolve()``, once per directory with ``cache`` (one production call resolves the same payload
    databases and raw folders for hundreds of runs and thousands of files: one ``lstat`` per path component each)."""
    if cache is None:
        return directory.resolve()
    hit = cache.get(directory)
    if hit is None:
        hit = cache[directory] = directory.resolve()
    return hit


def _fingerprint(chain, name: str, exprun: ExpRun, resolved: dict[Path, Path] | None = None) -> dict[str, Any] | None:
    """``{"database": dir, "revision": rev}`` of the payload in force, None for the nominal default;
    ``resolved``: the cache of :func:`_resolved_dir`."""
    entry = chain.lookup(name, exprun)
    if entry is None:
        return None
    return {"database": str(_resolved_dir(Path(entry.path).parent, resolved)), "revision": entry.revision}


def _group_fingerprints(chain, exprun: ExpRun, scattering: bool = FIT_SCATTERING,
                        resolved: dict[Path, Path] | None = None) -> dict[str, dict[str, Any]]:
    cache: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for group, names in GROUP_PAYLOADS.items():
        out[group] = {}
        for name in names:
            if name not in cache:
                cache[name] = _fingerprint(chain, name, exprun, resolved)
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
    if manifest.get("group_trees") != _current_group_trees():
        return False
    if manifest.get("groups") != _group_fingerprints(chain, exprun, scattering):
        return False
    for files in manifest["files"].values():
        for record in files:
            if not (Path(cdst_run_dir) / record["cdst"]).is_file():
                return False
    return True


def _current_group_trees() -> dict[str, list[str]]:
    """GROUP_TREES as the manifest records it."""
    return {g: list(t) for g, t in GROUP_TREES.items()}


# --- I/O ------------------------------------------------------------------------------------------
def _read_trees(path: Path, trees: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Every branch of ``trees`` in a cDST file; a missing file/tree raises ProductionError naming it."""
    try:
        return read_trees(path, {tree: None for tree in trees})
    except RootReadError as exc:
        raise ProductionError(str(exc)) from exc


def _write_trees_atomic(path: Path, trees: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    write_trees(path, trees)  # TTrees, temporary name then rename


def _write_manifests(manifests: Sequence[tuple[Path, Any]]) -> None:
    """The runs' manifests, each atomic and on disk before it replaces the old one, with one flush for all
    (:func:`~b2luca.atomic.write_json_atomic_many`: a task of hundreds of runs paid one fsync per run)."""
    write_json_atomic_many(manifests, indent=1)


def _strip(tree: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A raw tree as read by read_raw, without the reader's ``gevent`` column."""
    return {k: v for k, v in tree.items() if k != "gevent"}


# --- the three groups -----------------------------------------------------------------------------
def _group_hits(raw: Mapping[str, Mapping[str, np.ndarray]], constants) -> dict[str, dict[str, np.ndarray]]:
    svd = _strip(raw["svd"])
    svd["time_corrected"] = svd_time(raw["svd"], constants).astype(np.float32)
    cdc = _strip(raw["cdc"])
    cdc["drift_time"] = cdc_drift_time(raw["cdc"], constants).astype(np.float32)
    return {"event": _strip(raw["event"]), "pxd": _strip(raw["pxd"]), "svd": svd, "cdc": cdc,
            "pxd_digits": _strip(raw["pxd_digits"]), "ecl_full": _strip(raw["ecl_full"])}


def _empty_tracks() -> dict[str, dict[str, np.ndarray]]:
    tracks: dict[str, np.ndarray] = {"event": np.zeros(0, np.int64), "cand": np.zeros(0, np.int16)}
    tracks.update({n: np.zeros(0) for n in _PARAM_NAMES})
    tracks.update({f"cov_{i}{j}": np.zeros(0) for i, j in _COV_INDEX})
    tracks.update(chi2=np.zeros(0), ndf=np.zeros(0, np.int32), p=np.zeros(0), charge=np.zeros(0, np.int8),
                  n_pxd=np.zeros(0, np.int32), n_svd=np.zeros(0, np.int32), n_cdc=np.zeros(0, np.int32))
    rel: dict[str, np.ndarray] = {"track": np.zeros(0, np.int32), "det": np.zeros(0, np.int8), "hit": np.zeros(0, np.int64),
           "kind": np.zeros(0, np.int8), "residual": np.zeros(0), "sigma": np.zeros(0)}
    return {"tracks": tracks, "track_hits": rel}


def _track_measurements(raw: Mapping[str, Mapping[str, np.ndarray]], constants: Constants) -> Measurements | None:
    """The measurement rows of a raw file's track candidates; None when it has none."""
    n_hits = sum(int(raw[d]["event"].size) for d in ("pxd", "svd", "cdc"))
    if n_hits == 0:
        return None
    meas = build_measurements(raw, constants)
    return meas if meas.n_tracks else None


def _concat_measurements(parts: Sequence[Measurements], event_offsets: Sequence[int]) -> Measurements:
    """One Measurements of several files' candidates: track indices shifted, ``track_key[:, 0]`` (the
    file's event row) shifted by ``event_offsets`` so that keys stay unique and sorted."""
    tracks, keys, shift = [], [], 0
    for meas, offset in zip(parts, event_offsets):
        tracks.append(meas.track + shift)
        keys.append(meas.track_key + np.array([offset, 0], np.int64))
        shift += meas.n_tracks
    cols = {name: np.concatenate([getattr(m, name) for m in parts])
            for name in ("kind", "sensor", "layer", "wire", "m", "sigma", "hit", "det", "approx_pos")}
    return Measurements(track_key=np.concatenate(keys), track=np.concatenate(tracks), **cols)


def _fit_slice(fit: RobustFit, t0: int, t1: int, event_offset: int) -> RobustFit:
    """Tracks ``t0:t1`` of a batch fit (one file's): tracks renumbered from 0, event rows unshifted."""
    meas = fit.meas
    r0, r1 = np.searchsorted(meas.track, [t0, t1])
    rows = slice(int(r0), int(r1))
    sub = Measurements(track_key=meas.track_key[t0:t1] - np.array([event_offset, 0], np.int64),
                       track=meas.track[rows] - t0, kind=meas.kind[rows], sensor=meas.sensor[rows],
                       layer=meas.layer[rows], wire=meas.wire[rows], m=meas.m[rows], sigma=meas.sigma[rows],
                       hit=meas.hit[rows], det=meas.det[rows], approx_pos=meas.approx_pos[rows])
    assert fit.residual is not None  # requested by default
    return replace(fit, meas=sub, params=fit.params[t0:t1], cov=fit.cov[t0:t1], chi2=fit.chi2[t0:t1],
                   ndf=fit.ndf[t0:t1], residual=fit.residual[rows])


def _fit_files(raws: Sequence[Mapping[str, Mapping[str, np.ndarray]]], constants: Constants,
               scattering: bool = FIT_SCATTERING) -> list[dict[str, dict[str, np.ndarray]]]:
    """The ``tracks`` group of several raw files fitted in one batch: per file its trees (and
    ``_failed_fits``).  Every candidate is fitted on its own (the batch only shares the fit calls)."""
    metas = [_track_measurements(raw, constants) for raw in raws]
    out: list[dict[str, dict[str, np.ndarray]]] = [_empty_tracks() for _ in raws]
    present = [i for i, m in enumerate(metas) if m is not None]
    if not present:
        return out
    offsets = np.cumsum([0] + [int(raws[i]["event"]["event"].size) for i in present])
    parts = [metas[i] for i in present]
    fit = fit_robust(_concat_measurements(parts, offsets[:-1]), constants, scattering=scattering)  # type: ignore[arg-type]
    file_of_track = np.searchsorted(offsets, fit.meas.track_key[:, 0], side="right") - 1
    bounds = np.searchsorted(file_of_track, np.arange(len(present) + 1))
    for k, i in enumerate(present):
        t0, t1 = int(bounds[k]), int(bounds[k + 1])
        trees = _tracks_trees(raws[i], _fit_slice(fit, t0, t1, int(offsets[k])))
        n_candidates = parts[k].n_tracks  # type: ignore[union-attr]
        trees["_failed_fits"] = {"n": np.array([n_candidates - (t1 - t0)])}
        out[i] = trees
    return out


def _tracks_trees(raw: Mapping[str, Mapping[str, np.ndarray]], fit: RobustFit) -> dict[str, dict[str, np.ndarray]]:
    """The ``tracks`` and ``track_hits`` trees of one file from its fitted tracks."""
    meas = fit.meas
    assert fit.residual is not None  # requested by default
    nt = meas.n_tracks
    if nt == 0:
        return _empty_tracks()
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
    return {"tracks": tracks, "track_hits": rel}


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
    ecl = _strip(raw["ecl"])
    ecl["energy"] = ecl_energy(raw["ecl"], constants).astype(np.float64)
    return {"ecl": ecl, "ecl_clusters": ecl_clusters(ecl["event"], ecl["cand"], ecl["crystal"], ecl["energy"])}


_BUILDERS: dict[str, Callable[..., dict[str, dict[str, np.ndarray]]]] = {"hits": _group_hits, "ecl": _group_ecl}


# --- the run --------------------------------------------------------------------------------------
def _raw_files(raw_run_dir: Path) -> dict[str, list[Path]]:
    if not raw_run_dir.is_dir():
        raise ProductionError(f"raw run directory {raw_run_dir} does not exist")
    tags = {}
    for tag_dir in sorted(p for p in raw_run_dir.iterdir() if p.is_dir()):
        # one scandir per data tag (pathlib's glob machinery cost more than the listing at thousands of files)
        with os.scandir(tag_dir) as entries:
            names = [e.name for e in entries if e.name.startswith("raw_") and e.name.endswith(".root")]
        files = [tag_dir / name for name in sorted(names, key=lambda n: (len(n), n))]
        if files:
            tags[tag_dir.name] = files
    if not tags:
        raise ProductionError(f"{raw_run_dir}: no <data_tag>/raw_*.root files")
    return tags


def _cdst_name(raw_file: Path) -> str:
    return "cdst_" + raw_file.name[len("raw_"):]


#: Raw bytes read into memory at once: the files of one data tag (sharing constants) are fitted together in
#: batches of about this size, so the memory of a production is bounded whatever the number of files.
BATCH_BYTES = 64 * 2 ** 20


@dataclass
class _Run:
    """One run of a production call: its plan, then what was done to its files."""

    raw_run_dir: Path
    cdst_run_dir: Path
    exprun: ExpRun
    tags: dict[str, list[Path]]
    fingerprints: dict[str, dict[str, Any]]
    old: dict[str, Any] | None
    files_out: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=lambda: {g: 0 for g in GROUP_PAYLOADS})
    copied: dict[str, int] = field(default_factory=lambda: {g: 0 for g in GROUP_PAYLOADS})
    failed_fits: int = 0


@dataclass
class _FileJob:
    """One raw file whose cDST file must be (re)written: ``todo`` groups computed, the others copied."""

    run: _Run
    tag: str
    slot: int  # position in run.files_out[tag]
    raw_file: Path
    identity: dict[str, int]
    cdst_rel: str
    todo: set[str]
    constants_key: tuple


def _plan_run(raw_run_dir: Path, cdst_run_dir: Path, exprun: ExpRun, chain, scattering: bool,
              resolved: dict[Path, Path] | None = None) -> _Run:
    """Read the old manifest and decide per file what to do (kept files are recorded at once)."""
    tags = _raw_files(raw_run_dir)
    try:
        old = read_manifest(cdst_run_dir)
    except ProductionError as exc:  # never half-written (atomic), so foreign or damaged: start afresh
        logging.getLogger(__name__).warning("%s; producing the run from scratch", exc)
        old = None
    if old is not None and old.get("format_version") != FORMAT_VERSION:
        old = None
    if old is not None and old.get("group_trees") != _current_group_trees():
        old = None  # written when a group had other trees (e.g. before ecl_full): nothing can be copied from it
    return _Run(raw_run_dir, cdst_run_dir, exprun, tags, _group_fingerprints(chain, exprun, scattering, resolved), old)


def _constants_key(chain, exprun: ExpRun) -> tuple:
    """What the constants of ``exprun`` are made of: the payload files in force (equal keys, equal constants)."""
    key = []
    for name in PAYLOAD_NAMES:
        entry = chain.lookup(name, exprun)
        key.append(None if entry is None else (str(entry.path), entry.revision))
    return tuple(key)


def _file_jobs(run: _Run, chain) -> list[_FileJob]:
    """The files of ``run`` to (re)write; files that stay as they are go straight into ``run.files_out``."""
    old = run.old
    old_files = {(tag, rec["raw_name"]): rec for tag, recs in (old or {}).get("files", {}).items() for rec in recs}
    stale = {g for g in GROUP_PAYLOADS if old is None or old.get("groups", {}).get(g) != run.fingerprints[g]}
    jobs = []
    key: tuple | None = None
    for tag, raws in run.tags.items():
        run.files_out[tag] = []
        for raw_file in raws:
            identity = _raw_identity(raw_file)
            cdst_rel = f"{tag}/{_cdst_name(raw_file)}"
            previous = old_files.get((tag, raw_file.name))
            reusable = previous is not None and previous.get("raw") == identity and (run.cdst_run_dir / cdst_rel).is_file()
            todo = set(GROUP_PAYLOADS) if not reusable else stale
            if not todo:  # everything current: the file stays as it is
                assert previous is not None
                for g in GROUP_PAYLOADS:
                    run.copied[g] += 1
                run.files_out[tag].append({**previous, "groups": {g: "kept" for g in GROUP_PAYLOADS}})
                continue
            if key is None:
                key = _constants_key(chain, run.exprun)
            jobs.append(_FileJob(run, tag, len(run.files_out[tag]), raw_file, identity, cdst_rel, set(todo), key))
            run.files_out[tag].append(None)
    return jobs


def _batches(jobs: list[_FileJob]) -> list[list[_FileJob]]:
    """Jobs grouped by (constants, data tag), in order, each batch at most about BATCH_BYTES of raw data."""
    by_kind: dict[tuple, list[_FileJob]] = {}
    for job in jobs:
        by_kind.setdefault((job.constants_key, job.tag), []).append(job)
    out: list[list[_FileJob]] = []
    for group in by_kind.values():
        batch: list[_FileJob] = []
        size = 0
        for job in group:
            if batch and size + job.identity["size"] > BATCH_BYTES:
                out.append(batch)
                batch, size = [], 0
            batch.append(job)
            size += job.identity["size"]
        out.append(batch)
    return out


def _resolved(path: Path, resolved_dirs: dict[Path, Path]) -> str:
    """``str(path.resolve())`` with the parent directory resolved once (:func:`_resolved_dir`): a raw file's own
    symbolic link is still followed; one ``lstat`` per file instead of one per component of its path."""
    if path.is_symlink():
        return str(path.resolve())
    return str(_resolved_dir(path.parent, resolved_dirs) / path.name)


def _produce_batch(batch: list[_FileJob], constants: Constants, scattering: bool,
                   resolved_dirs: dict[Path, Path] | None = None) -> None:
    """Compute, copy and write the cDST files of one batch; record them in their runs' ``files_out``."""
    resolved_dirs = {} if resolved_dirs is None else resolved_dirs
    raws = [read_raw([job.raw_file], RAW_TREES_READ) for job in batch]
    fitted = [i for i, job in enumerate(batch) if "tracks" in job.todo]
    track_trees = dict(zip(fitted, _fit_files([raws[i] for i in fitted], constants, scattering)))
    for i, job in enumerate(batch):
        cdst_file = job.run.cdst_run_dir / job.cdst_rel
        trees: dict[str, dict[str, np.ndarray]] = {}
        keep = [g for g in GROUP_PAYLOADS if g not in job.todo]
        if keep:
            trees.update(_read_trees(cdst_file, tuple(t for g in keep for t in GROUP_TREES[g])))
        for group in GROUP_PAYLOADS:
            if group in job.todo:
                trees.update(track_trees[i] if group == "tracks" else _BUILDERS[group](raws[i], constants))
        failed = trees.pop("_failed_fits", None)
        if failed is not None:
            job.run.failed_fits += int(failed["n"][0])
        _write_trees_atomic(cdst_file, {t: trees[t] for g in GROUP_PAYLOADS for t in GROUP_TREES[g]})
        for g in GROUP_PAYLOADS:
            (job.run.computed if g in job.todo else job.run.copied)[g] += 1
        job.run.files_out[job.tag][job.slot] = {
            "raw_name": job.raw_file.name, "raw_path": _resolved(job.raw_file, resolved_dirs), "raw": job.identity,
            "cdst": job.cdst_rel, "tracks": int(trees["tracks"]["event"].size),
            "groups": {g: ("computed" if g in job.todo else "copied") for g in GROUP_PAYLOADS}}
        raws[i] = {}  # free the raw data of written files early


def _finish_run(run: _Run, seconds: float, n_runs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's manifest (written last, by the caller) and its summary."""
    # files of tags/raw files that disappeared are not listed any more (their cDST files are left alone)
    files_out = {tag: [rec for rec in recs if rec is not None] for tag, recs in run.files_out.items()}
    history = list((run.old or {}).get("history", []))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "computed": run.computed,
             "copied": run.copied, "failed_fits": run.failed_fits, "seconds": round(seconds, 3)}
    if n_runs > 1:
        entry["runs_produced_together"] = n_runs  # seconds are those of the whole group
    history.append(entry)
    manifest = {"format_version": FORMAT_VERSION, "exprun": run.exprun.as_list(),
                "raw_run_dir": str(run.raw_run_dir.resolve()), "groups": run.fingerprints,
                "group_trees": {g: list(t) for g, t in GROUP_TREES.items()}, "files": files_out, "history": history}
    payloads = {}
    for used in run.fingerprints.values():
        for name, fp in used.items():
            if not name.startswith("_"):
                payloads[name] = "nominal" if fp is None else fp["revision"]
    n_tracks = {tag: sum(int(rec.get("tracks", 0)) for rec in recs) for tag, recs in files_out.items()}
    return manifest, {"tags": sorted(run.tags), "files": sum(len(v) for v in files_out.values()),
                      "tracks": n_tracks, "seconds": round(seconds, 3), "payloads": payloads,
                      "computed": run.computed, "copied": run.copied, "failed_fits": run.failed_fits}


def warm_constants(chain, exprun: ExpRun) -> int:
    """Read the payload files that :func:`load_constants` reads for ``exprun`` into this process's cache of verified
    payload files (:func:`b2luca.conditions.database.read_verified`, keyed by each file's identity), without
    building the constants, and builds the (cached) nominal geometry: a process forked afterwards has both in
    memory (the driver, before luigi forks a production task's process: ~0.1 s of each such task, issue 15).
    Returns how many of the payloads the chain has."""
    nominal_geometry()
    return sum(chain.read_or_none(name, exprun) is not None for name in PAYLOAD_NAMES)


def produce_runs(runs: Sequence[tuple[Path, Path, ExpRun]], chain,
                 scattering: bool = FIT_SCATTERING) -> list[dict[str, Any]]:
    """Reconstruct several runs, ``(raw_run_dir, cdst_run_dir, exprun)`` each, into their cDST files (see
    the module docstring); returns one :func:`produce_run` summary per run (``seconds``: the whole call).

    Every run is checked before anything is written: missing raw directories or files of all runs are
    reported together in one :class:`ProductionError`.
    """
    start = time.perf_counter()
    plans: list[_Run] = []
    problems = []
    resolved_dirs: dict[Path, Path] = {}  # payload databases and raw folders, resolved once for all runs
    for raw_run_dir, cdst_run_dir, exprun in runs:
        try:
            plans.append(_plan_run(Path(raw_run_dir), Path(cdst_run_dir), exprun, chain, scattering, resolved_dirs))
        except ProductionError as exc:
            problems.append(str(exc))
    if problems:
        raise ProductionError("; ".join(problems))
    jobs = [job for run in plans for job in _file_jobs(run, chain)]
    constants: dict[tuple, Constants] = {}  # read once per distinct set of payloads, not once per run
    for batch in _batches(jobs):
        key = batch[0].constants_key
        if key not in constants:
            constants[key] = load_constants(chain, batch[0].run.exprun)
        _produce_batch(batch, constants[key], scattering, resolved_dirs)
    seconds = time.perf_counter() - start
    finished = [_finish_run(run, seconds, len(plans)) for run in plans]
    _write_manifests([(run.cdst_run_dir / MANIFEST, manifest) for run, (manifest, _) in zip(plans, finished)])
    return [summary for _, summary in finished]


def produce_run(raw_run_dir: Path, cdst_run_dir: Path, chain, exprun: ExpRun,
                scattering: bool = FIT_SCATTERING) -> dict[str, Any]:
    """Reconstruct every raw file of one run (all data tags) into cDST files; see the module docstring.

    Returns a JSON-able summary: ``tags``, ``files``, ``tracks`` (per tag), ``seconds``, ``payloads``
    (name -> revision or "nominal"), ``computed`` / ``copied`` (group -> number of files), and
    ``failed_fits`` (candidates whose fit failed and that are left out of ``tracks``).
    """
    return produce_runs([(raw_run_dir, cdst_run_dir, exprun)], chain, scattering)[0]


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


__all__ = ["BATCH_BYTES", "FORMAT_VERSION", "GROUP_PAYLOADS", "GROUP_TREES", "MANIFEST", "ProductionError", "ecl_clusters",
           "manifest_is_current", "produce_run", "produce_runs", "read_cdst", "read_manifest", "warm_constants"]
