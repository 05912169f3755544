"""``simulate_bucket``: raw data, run database and conditions (nominal, truth, staging) of one bucket."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import write_json_atomic
from ..iov import IoV
from ..reco.geometry import Geometry, nominal_geometry
from ..reco.raw import write_raw
from . import generate as G
from .ecl_showers import ecl_full_hits, gen_radmumu
from .pxd_background import pxd_background
from .pxd_overlay import BackgroundSource, background_for_events, overlay_pxd_hits
from .runs import data_tags_for_run, run_records
from .truth import (Movement, Truth, make_truth, movement_intervals, nominal_payloads, parse_movements,
                    staging_payloads, truth_for_run, truth_payloads)

DATA_TAGS = ("cosmic_calib", "mumu_tight_or_highm_calib", "hadron_calib", "bhabha_all_calib", "random_calib",
             "radmumu_calib")  # new tags go at the end: the index seeds each sample
#: samples that also get the detailed ECL shower tree ``ecl_full`` (b2luca/sim/ecl_showers.py)
ECL_FULL_TAGS = ("mumu_tight_or_highm_calib", "hadron_calib", "radmumu_calib")
#: samples that also get the PXD beam-background tree ``pxd_bkg`` (b2luca/sim/pxd_background.py)
PXD_BKG_TAGS = ("random_calib",)


@dataclass
class SimulationSummary:
    """What :func:`simulate_bucket` wrote."""

    bucket: str
    experiment: int
    runs: list[int]
    seed: int
    files: list[Path] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)  # total per data tag
    hits: dict[str, int] = field(default_factory=dict)  # total per detector (pxd, svd, cdc, ecl, pxd_digits)
    vxd_hits_per_sensor: np.ndarray | None = None  # (212,) tracking hits per VXD sensor (all runs, all tags)
    #: (run, tag) -> (212,) tracking hits per VXD sensor (in VxdID order, see nominal_geometry().sensor_id)
    vxd_hits_by_run_tag: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    global_tags: dict[str, str] = field(default_factory=dict)  # role -> name
    runs_json: Path | None = None
    runs_csv: Path | None = None
    wall_time_s: float = 0.0


@dataclass
class SampleResult:
    """One simulated sample: raw trees (as written) and the truth-level information (tests only)."""

    raw: dict[str, dict[str, np.ndarray]]
    tracks: G.Tracks | None
    digits: dict[str, dict[str, np.ndarray]] | None


def sample_seed(seed: int, experiment: int, run: int, tag: str) -> np.random.SeedSequence:
    """Seed sequence of one (run, data tag)."""
    return np.random.SeedSequence([int(seed), int(experiment), int(run), DATA_TAGS.index(tag), 0x5A3])


def simulate_sample(tag: str, n_events: int, rng: np.random.Generator, truth: Truth,
                    geom: Geometry | None = None, material_scale: float = 1.0, experiment: int = 0,
                    run: int = 0, magnet_on: bool = True, pxd_background_mode: str = "none",
                    pxd_generator: BackgroundSource | None = None) -> SampleResult:
    """Simulate ``n_events`` of data tag ``tag``; raw trees use event numbers 1..n_events.

    ``pxd_background_mode`` (``none`` | ``simulated`` | ``gan`` with ``pxd_generator``, e.g. a
    PXDBackgroundGAN payload): beam background overlaid on the PXD hits of tracking samples
    (b2luca/sim/pxd_overlay.py), drawn from its own stream after everything else; ``none`` changes nothing.

    ``material_scale`` scales all material (0 switches multiple scattering off; tests only).
    ``magnet_on=False``: no field, tracks are straight lines with the same perigee (omega = 0)."""
    geom = geom or nominal_geometry()
    if tag not in DATA_TAGS:
        raise ValueError(f"unknown data tag {tag!r}; known: {', '.join(DATA_TAGS)}")
    ev_numbers = np.arange(1, n_events + 1, dtype=np.int64)
    if tag == "random_calib":
        d = G.random_pxd_digits(rng, n_events, geom, truth)
        d["event"] = d["event"] + 1
        digits_only: dict[str, dict[str, np.ndarray]] = {
            "event": {"event": ev_numbers, "n_cand": np.zeros(n_events, np.int32),
                      "exp": np.full(n_events, experiment, np.int32), "run": np.full(n_events, run, np.int32)},
            "pxd_digits": d}
        if tag in PXD_BKG_TAGS:  # a separate stream, drawn after the digits: those stay unchanged
            bkg = pxd_background(np.random.default_rng(int(rng.integers(0, 2 ** 63))), n_events, geom)
            digits_only["pxd_bkg"] = {**bkg, "event": bkg["event"] + 1}
        return SampleResult(digits_only, None, None)
    if tag == "cosmic_calib":
        tracks = G.gen_cosmic(rng, n_events)
    elif tag == "mumu_tight_or_highm_calib":
        tracks = G.gen_pairs(rng, n_events, truth, G.KIND_MU)
    elif tag == "bhabha_all_calib":
        tracks = G.gen_pairs(rng, n_events, truth, G.KIND_E)
    elif tag == "radmumu_calib":
        mu_event, mu_h, mu_p = gen_radmumu(rng, n_events, truth.beam_position, truth.beam_size)[:3]
        tracks = G.Tracks(mu_event, mu_h, mu_p, np.full(2 * n_events, G.KIND_MU, np.int8), False)
    else:
        tracks = G.gen_hadron(rng, n_events, truth)
    if not magnet_on:
        tracks.h[:, 2] = 0.0
    hits = G.propagate(tracks, geom, truth, rng, material_scale)
    digits = G.digitize(tracks, hits, geom, truth, rng)
    first = np.searchsorted(tracks.event, tracks.event)  # tracks sorted by event
    cand_of_track = (np.arange(len(tracks)) - first).astype(np.int16)
    raw: dict[str, dict[str, np.ndarray]] = {
        "event": {"event": ev_numbers, "n_cand": np.bincount(tracks.event, minlength=n_events).astype(np.int32),
                  "exp": np.full(n_events, experiment, np.int32), "run": np.full(n_events, run, np.int32)}}
    for det, cols in digits.items():
        trk = cols["track"]
        out: dict[str, np.ndarray] = {"event": tracks.event[trk] + 1, "cand": cand_of_track[trk]}
        out.update({k: v for k, v in cols.items() if k != "track" and not k.startswith("true_")})
        order = np.argsort(out["event"], kind="stable")
        raw[det] = {k: v[order] for k, v in out.items()}
    if tag in ECL_FULL_TAGS:  # a separate stream, drawn after everything above: existing arrays unchanged
        ecl_rng = np.random.default_rng(int(rng.integers(0, 2 ** 63)))
        e = hits["ecl"]
        trk = e["track"]
        full = ecl_full_hits(tracks.event[trk], tracks.kind[trk], tracks.p[trk], tracks.h[trk], e["theta"], e["phi"],
                             truth.ecl_gain, ecl_rng)
        raw["ecl_full"] = {**full, "event": full["event"] + 1}
    if pxd_background_mode != "none" and "pxd" in raw:  # a separate stream, drawn last (issue 16 overlay)
        bkg_rng = np.random.default_rng(int(rng.integers(0, 2 ** 63)))
        hits0 = {**raw["pxd"], "event": raw["pxd"]["event"] - 1}
        pixels = background_for_events(pxd_background_mode, bkg_rng, n_events, geom, pxd_generator, hits0)
        if pixels is not None:
            raw["pxd"] = overlay_pxd_hits(raw["pxd"], {**pixels, "event": np.asarray(pixels["event"]) + 1}, geom)
    return SampleResult(raw, tracks, digits)


def _split_events(raw: Mapping[str, Mapping[str, np.ndarray]], n_files: int) -> list[dict]:
    ev = raw["event"]["event"]
    edges = np.linspace(0, ev.size, n_files + 1).astype(np.int64)
    parts = []
    for i in range(n_files):
        lo, hi = (ev[edges[i]] if edges[i] < ev.size else np.inf), (ev[edges[i + 1]] if edges[i + 1] < ev.size else np.inf)
        part = {}
        for tree, cols in raw.items():
            e = cols["event"]
            m = slice(np.searchsorted(e, lo), np.searchsorted(e, hi))
            part[tree] = {k: v[m] for k, v in cols.items()}
        parts.append(part)
    return parts


def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, indent=1)


def write_conditions(conditions_dir: Path, bucket: str, experiment: int, runs: list[int], seed: int,
                     truth: Truth, geom: Geometry, movements: Sequence[Movement] = ()) -> dict[str, str]:
    """Create the nominal, truth and staging global tags; returns {role: global tag name}.

    With ``movements`` the truth tag holds VXDAlignment and CDCAlignment once per interval of runs with the
    same movements in force (one IoV each)."""
    from ..conditions import GlobalTag

    bucket_iov = IoV(int(experiment), int(min(runs)), int(experiment), int(max(runs)))
    names = {"nominal": f"nominal_{bucket}", "truth": f"truth_{bucket}", "staging_pxd": f"staging_pxd_{bucket}",
             "staging_svd": f"staging_svd_{bucket}"}
    nominal = GlobalTag.create(conditions_dir, names["nominal"])
    for name, data in nominal_payloads(geom).items():
        nominal.store(name, data, IoV(0, 0, -1, -1))
    tt = GlobalTag.create(conditions_dir, names["truth"])
    for name, data in truth_payloads(truth, geom).items():
        if movements and name in ("VXDAlignment", "CDCAlignment"):
            continue
        tt.store(name, data, bucket_iov)
    if movements:
        for lo, hi in movement_intervals(movements, runs):
            moved = truth_payloads(truth_for_run(truth, movements, lo, geom), geom)
            for name in ("VXDAlignment", "CDCAlignment"):
                tt.store(name, moved[name], IoV(int(experiment), lo, int(experiment), hi))
    staging = staging_payloads(truth, seed, geom)
    for role in ("pxd", "svd"):
        gt = GlobalTag.create(conditions_dir, names[f"staging_{role}"])
        for name, data in staging[role].items():
            gt.store(name, data, IoV(int(experiment), 0, int(experiment), -1))
    return names


def simulate_bucket(*, bucket: str, experiment: int, runs: list[int], seed: int, events: Mapping[str, int],
                    data_dir: Path, conditions_dir: Path, files_per_run: int = 1, pxd_background_mode: str = "none",
                    pxd_generator: BackgroundSource | None = None, weak_modes: Mapping[str, float] | None = None,
                    movements: Sequence[Mapping[str, Any] | Movement] = ()) -> SimulationSummary:
    """Simulate a whole bucket: raw files ``<data_dir>/eEEEE/rRRRRR/<tag>/raw_<n>.root``,
    ``<data_dir>/runs.json`` (+ ``runs.csv``), and the global tags ``nominal_<bucket>``,
    ``truth_<bucket>``, ``staging_pxd_<bucket>``, ``staging_svd_<bucket>`` under ``conditions_dir``.

    ``events``: events per run per data tag.  Deterministic for ``seed``.  ``pxd_background_mode`` /
    ``pxd_generator``: PXD background overlay of the tracking samples (see :func:`simulate_sample`).
    ``weak_modes``: weak-mode distortions added to the truth misalignment (see
    :func:`b2luca.sim.truth.make_truth`).  ``movements``: parts that move between runs (``[{part, from_run,
    shift_um}]``, see :func:`b2luca.sim.truth.parse_movements`): the runs from ``from_run`` on are simulated with
    the part translated, and the truth tag has one IoV per interval.
    """
    t_start = time.perf_counter()
    unknown = sorted(set(events) - set(DATA_TAGS))
    if unknown:
        raise ValueError(f"simulate_bucket: unknown data tag(s) {unknown}; known: {', '.join(DATA_TAGS)}")
    if not runs:
        raise ValueError("simulate_bucket: no runs given")
    if files_per_run < 1:
        raise ValueError("simulate_bucket: files_per_run must be >= 1")
    data_dir, conditions_dir = Path(data_dir), Path(conditions_dir)
    geom = nominal_geometry()
    truth = make_truth(seed, geom, weak_modes)
    moves = [m for m in movements if isinstance(m, Movement)]
    moves += parse_movements([m for m in movements if not isinstance(m, Movement)])
    records = run_records(experiment, list(runs), seed)
    summary = SimulationSummary(bucket=bucket, experiment=int(experiment), runs=sorted(int(r) for r in runs),
                                seed=int(seed))
    per_sensor = np.zeros(geom.n_sensors, np.int64)
    tags = [t for t in DATA_TAGS if events.get(t, 0) > 0]
    for rec in records:
        run = rec["run"]
        for tag in data_tags_for_run(rec, tags):
            rng = np.random.default_rng(sample_seed(seed, experiment, run, tag))
            res = simulate_sample(tag, int(events[tag]), rng, truth_for_run(truth, moves, run, geom), geom,
                                  experiment=experiment, run=run, magnet_on=rec["detectors"]["magnet"] == "On",
                                  pxd_background_mode=pxd_background_mode, pxd_generator=pxd_generator)
            summary.events[tag] = summary.events.get(tag, 0) + int(events[tag])
            for det in ("pxd", "svd", "cdc", "ecl", "pxd_digits", "ecl_full", "pxd_bkg"):
                if det in res.raw:
                    summary.hits[det] = summary.hits.get(det, 0) + int(res.raw[det]["event"].size)
            counts = np.zeros(geom.n_sensors, np.int64)
            for det in ("pxd", "svd"):
                if det in res.raw:
                    counts += np.bincount(geom.sensor_index(res.raw[det]["sensor"]), minlength=geom.n_sensors)
            summary.vxd_hits_by_run_tag[(run, tag)] = counts
            per_sensor += counts
            tag_dir = data_dir / f"e{experiment:04d}" / f"r{run:05d}" / tag
            written = []
            for i, part in enumerate(_split_events(res.raw, files_per_run)):
                path = tag_dir / f"raw_{i}.root"
                write_raw(path, part)
                written.append(path)
            for stale in set(tag_dir.glob("raw_*.root")) - set(written):  # from an earlier simulation
                stale.unlink()
            summary.files.extend(written)
    summary.vxd_hits_per_sensor = per_sensor
    summary.runs_json = data_dir / "runs.json"
    _write_json(summary.runs_json, records)
    from ..rundb import write_snapshot

    summary.runs_csv = data_dir / "runs.csv"
    write_snapshot(records, summary.runs_csv)
    summary.global_tags = write_conditions(conditions_dir, bucket, experiment, list(runs), seed, truth, geom,
                                            moves)
    summary.wall_time_s = time.perf_counter() - t_start
    return summary
