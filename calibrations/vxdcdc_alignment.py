"""Full VXD and CDC alignment.

Simultaneous global alignment of the VXD sensors and CDC layers with b2luca's Millepede-style solver
from a mix of track samples, each of which pins weak modes the others leave free: cosmic tracks through
the whole detector (both halves, off the IP), di-muons and hadronic tracks from the interaction point
with the beam spot as a measurement (beam-spot constraint).  Needs the CDC time offsets, the SVD time
offsets and the PXD masks of this bucket (the track finding reads all three).

Track model (General Broken Lines): tracks are fitted with the reconstruction's fit
(:func:`b2luca.reco.track_model.fit_track_model`: helix + multiple-scattering kinks at the beam pipe, the
six VXD layers and the CDC inner wall, muon or pion mass hypothesis) with the constants in force
(database chain: the CDC T0s, SVD time offsets and PXD masks of this bucket).  Every fitted track
becomes one Mille record: its residuals, the local derivatives w.r.t. the 5 helix parameters and its
active kinks, one pseudo-measurement per kink (0 +- its Highland width), the 6 rigid-body derivatives
of its VXD sensors / 3 of its CDC layers; the collision tracks of one event form one record with their
common vertex as two more local parameters (:mod:`b2luca.alignment.vertex`): each track passes through the
vertex, and the vertex lies in the beam spot (error: the beam size, counted once per event, not once per
track), with the beam-spot position (x, y) as two more global parameters.  :func:`b2luca.alignment.solve`
solves for all 212 x 6 + 56 x 3 (+ 2) parameters at once.  Collision tracks down to a transverse momentum of ``min_pt`` GeV are used (the kinks give soft
tracks their weight; below 0.2 GeV curlers have CDC hits near their turning point that the model does
not describe); tracks with chi2/ndf > ``outlier_chi2_cut`` are rejected.  Parameters measured by fewer
than ``min_entries`` hits stay at their current values (pede's ``entries``; error NaN), and their hits are
left out of the fit (:mod:`b2luca.alignment.select`): a sensor held at its nominal position while it is really
tens of um away would pull the tracks through it and bias the sensors those tracks cross (on the small test
buckets, 4 such sensors widened the VXD du pulls to 1.21).

Global frame: fixed by four constraints (:func:`b2luca.alignment.constraints.frame_constraints`, written
to ``frame_constraints.txt`` in pede's format): the overall translation and the rotation about z of the VXD
sensors against the nominal geometry are zero; the VXD tilts are measured against the CDC wires (the CDC
layers cannot tilt).  The CDC layers and the beam spot are measured relative to the
VXD, so the BeamSpot calibrated after the alignment is in this frame too
(:func:`b2luca.alignment.frame.truth_in_frame` expresses a truth in it).  No presigma regularisation by
default (``presigma_shift_mm`` / ``presigma_rotation`` > 0 adds soft priors around the current values,
for studies; they act on the total correction of this calibration, over all iterations).  Up to
``max_iterations`` outer iterations (refit tracks with the corrected geometry, solve again) until every
correction is below ``convergence_pull`` times its error.  Extra payload key: ``params_error`` (same shape
as params).  With ``store_covariance`` the full covariance of the packed VXD + CDC parameters
(:class:`b2luca.alignment.weak_modes.ParameterLayout`), which alone gives the weak modes' errors (the validation
decorrelates its pulls with it), goes beside the payloads into ``vxdalignment_cov.npz`` in the job directory
(float32, one ``cov_<exp>_<run>`` per interval, named by its first run; ~8 MB each: not a payload).

Time dependence: ``timedep`` (basf2 format, naming parts such as ``PXD``, ``PXD+X``, ``CDC``) and
``payload_boundaries`` give parts one set of parameters per run interval, all in the same global fit
(:mod:`b2luca.alignment.timedep`; the frame constraints are repeated for every interval that is an
independent copy of the whole tracking system, :func:`frame_constraints_per_interval`); VXDAlignment / CDCAlignment are then written once per interval.
``auto_boundaries`` monitors the per-run position of each part of ``auto_boundaries_parts`` relative to
``auto_boundaries_reference`` (the rigid translations that fit the track residuals, local track parameters
eliminated; a jump of every monitored part at once is attributed to the reference) and proposes ("propose") or applies ("apply") a boundary where it
jumps by more than ``auto_boundaries_k_sigma`` errors and ``auto_boundaries_min_jump_um``.  The per-iteration
changes, the per-run trend, the boundaries and the time spent per phase go to ``vxdcdc_alignment_summary.json``
in the job directory (read by the validation).
"""

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS
from calibrations.cdc_time_zeros import settings as cdc_t0
from calibrations.pxd_hot_dead_pixels import settings as pxd_masks
from calibrations.svd_time_offsets import settings as svd_t0

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

collection_names = ["cosmic_calib", "mumu_tight_or_highm_calib", "hadron_calib"]

quality_flags = [INPUT_DATA_FILTERS["Run Type"]["physics"],
                 INPUT_DATA_FILTERS["Data Quality Tag"]["Good Or Recoverable"],
                 "NOT " + INPUT_DATA_FILTERS["Data Quality Tag"]["Bad For Alignment"],
                 INPUT_DATA_FILTERS["Magnet"]["On"]]

# events per file (0: the collection is not used) and in all, spread over the runs (<name>.max_processed_events,
# b2luca.input_sample; -1: no total cap).  The assembly time grows with the number of tracks and with
# the number of local parameters (5 + 2 per active kink: ~21 for collision tracks, ~37 for cosmics)
default_config = {"cosmic_calib.max_processed_events_per_file": 150,
                  "hadron_calib.max_processed_events_per_file": 30,
                  "mumu_tight_or_highm_calib.max_processed_events_per_file": 150,
                  "cosmic_calib.max_processed_events": -1,
                  "hadron_calib.max_processed_events": -1,
                  "mumu_tight_or_highm_calib.max_processed_events": -1,
                  "method": "sparse",
                  "max_iterations": 3,
                  "outlier_chi2_cut": 10.0,
                  "min_entries": 10,
                  "min_pt": 0.2,
                  "beam_spot_constraint": True,
                  "frame_constraints": True,
                  "presigma_shift_mm": 0.0,
                  "presigma_rotation": 0.0,
                  # write vxdalignment_cov.npz beside the payloads: the full (P, P) covariance of the packed VXD +
                  # CDC parameters per interval (b2luca.alignment.weak_modes.ParameterLayout; float32, ~8 MB) -- the
                  # weak modes are correlated over many parameters, so only it gives their errors and decorrelated
                  # pulls (the validation); not a payload (payloads stay small)
                  "store_covariance": True,
                  # iterations: refit the tracks with the corrected geometry until every correction of an
                  # iteration is below convergence_pull times its error (or max_iterations)
                  "convergence_pull": 3.0,
                  # time dependence (basf2's format): [[[parts], [[event, run, exp], ...]], ...] and/or
                  # payload_boundaries [[exp, run], ...] (all parts); parts: b2luca.reco.parts.PARTS
                  "timedep": [],
                  "payload_boundaries": [],
                  # per-run monitor of the parts' positions: "off", "propose" (report only) or "apply"
                  # (refit with the boundaries found); a boundary: a jump > k sigma and > min_jump_um
                  "auto_boundaries": "propose",
                  "auto_boundaries_parts": ["PXD", "SVD"],
                  "auto_boundaries_reference": "CDC",
                  "auto_boundaries_k_sigma": 5.0,
                  "auto_boundaries_min_jump_um": 5.0,
                  # the validation's precision requirement: largest acceptable statistical error of each global /
                  # weak mode amplitude [um / urad], per mode family or mode name, on top of the validation's
                  # defaults (calibrations/validations/vxdcdc_alignment.py, MODE_FAMILIES); {}: those defaults
                  "max_weak_mode_error": {}}

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="VXDCDCAlignment",
                               expert_username="alignment_expert",
                               subsystem="alignment",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=collection_names,
                               input_data_filters={
                                   "cosmic_calib": [INPUT_DATA_FILTERS["Data Tag"]["cosmic_calib"]] + quality_flags,
                                   "mumu_tight_or_highm_calib":
                                       [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"]] + quality_flags,
                                   "hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]] + quality_flags},
                               depends_on=[cdc_t0, svd_t0, pxd_masks],
                               expert_config=default_config,
                               produced_payloads=["VXDAlignment", "CDCAlignment"])


#: The payloads the track reconstruction of this calibration reads (ECL and beam-spot constants are not used).
RECO_PAYLOADS = ("VXDAlignment", "CDCAlignment", "CDCTimeZeros", "SVDTimeOffsets", "PXDMasks")

VXD_LABEL_FACTOR = 10
CDC_LABEL_BASE = 1_000_000
#: Millepede labels of the beam-spot position (x, y), fitted with the alignment.
BEAM_SPOT_LABELS = (2_000_001, 2_000_002)
#: Particle hypothesis (scattering widths) of each sample.
SAMPLE_MASS = {"cosmic_calib": 0.1056584, "mumu_tight_or_highm_calib": 0.1056584, "hadron_calib": 0.1395704}




def mille_records(raw, constants, cfg: dict, sample: str, beam_spot=None):
    """Fit the track candidates of ``raw`` (collection ``sample``) with the broken-line track model and
    return (MilleRecords or None, number of tracks used, chi2/ndf array of the used tracks).

    ``beam_spot``: a :class:`b2luca.reco.track_model.BeamSpotConstraint` added to every collision track
    (None: no beam-spot measurement; never for cosmics)."""
    recs, n, chi2_ndf, _ = track_records(raw, constants, cfg, sample, beam_spot)
    return recs, n, chi2_ndf


def track_records(raw, constants, cfg: dict, sample: str, beam_spot=None, warm: dict | None = None):
    """:func:`mille_records`, plus the event (``gevent`` of ``raw``) of every record: (records or None, tracks
    used, chi2/ndf of the used tracks, (n_records,) int64 events, non-decreasing).

    ``warm``: the fit state of these candidates between outer iterations (a dict, empty at first): when it holds an
    earlier fit, every candidate fitted then starts from its fitted track (:func:`b2luca.reco.track_model.warm_start`:
    after a geometry correction of a few um one or two Gauss-Newton steps instead of a fit from the seed, to the
    same convergence criterion); this fit is stored in it for the next iteration.  The selection below applies the
    same cuts either way (a track within the convergence tolerance of a cut may fall on the other side)."""
    from b2luca.alignment import records_from_dense
    from b2luca.alignment.vertex import event_vertex_records
    from b2luca.reco.geometry import C_B
    from b2luca.reco.measurements import build_measurements
    from b2luca.reco.track_model import fit_track_model, warm_start

    none = np.zeros(0, np.int64)
    meas = build_measurements(raw, constants)
    if meas.n_tracks == 0:
        return None, 0, np.zeros(0), none
    start = None
    if warm and "track_key" in warm:
        start = warm_start(warm["track_key"], warm["params"], warm["kinks"], meas)
    model = fit_track_model(meas, constants, mass=SAMPLE_MASS[sample], start=start)
    if warm is not None:  # (the fitted tracks only: small beside the model's per-row arrays)
        warm.update(track_key=model.meas.track_key, params=model.params, kinks=model.kinks)
    chi2_ndf = model.chi2 / np.maximum(model.ndf, 1)
    good = (chi2_ndf < float(cfg["outlier_chi2_cut"])) & (model.ndf > 5)
    cosmic = sample == "cosmic_calib"
    if not cosmic:
        good &= C_B / np.maximum(np.abs(model.params[:, 2]), 1e-12) > float(cfg["min_pt"])
    use = np.flatnonzero(good)
    if not use.size:
        return None, 0, chi2_ndf[good], none
    recs = records_from_dense(*model.dense_rows(use))
    event = model.meas.track_key[use, 0].astype(np.int64)  # tracks are sorted by (event, candidate)
    if beam_spot is not None and not cosmic:  # one record per event: common vertex in the beam spot
        recs = event_vertex_records(recs, event, model.params[use, 0], model.params[use, 1],
                                    model.n_local[use], beam_spot.position, beam_spot.size, beam_spot.labels)
        event = np.unique(event)  # one record per event, in event order
    return recs, int(use.size), chi2_ndf[good], event


def join_raws(raws: list[dict]) -> tuple[dict, np.ndarray]:
    """The raw trees of several files (:func:`b2luca.reco.raw.read_raw` each) as one: every tree's columns
    concatenated, with ``gevent`` shifted by the events of the files before (event ids restart in every file, so a
    track candidate (gevent, cand) stays unique).  Returns (joined trees, (files + 1,) event offsets: file ``i``
    holds the joined events ``offsets[i]:offsets[i + 1]``)."""
    sizes = [int(r["event"]["gevent"].size) for r in raws]
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    if len(raws) == 1:
        return raws[0], offsets
    trees = set(raws[0]).intersection(*raws[1:])
    out = {t: {b: np.concatenate([r[t][b] + offsets[i] if b == "gevent" else r[t][b] for i, r in enumerate(raws)])
               for b in raws[0][t]} for t in trees}
    return out, offsets


SUMMARY_FILE = "vxdcdc_alignment_summary.json"
#: the full covariance of the packed VXD + CDC parameters per interval, beside the payloads (read by the validation)
COV_FILE = "vxdalignment_cov.npz"
AUTO_MODES = ("off", "propose", "apply")


def calibrate(job) -> None:
    """Align the VXD sensors and CDC layers (see the module docstring); stores VXDAlignment and CDCAlignment.

    Runs with one BLAS thread throughout (the batched local fits and the dense covariance too, not only the
    solver): the payload must not depend on the machine's thread count (reproducibility, issue 17).  The
    solver's data pass runs with as many threads as the runner granted BLAS threads (the calibration's ``cpus``
    resource, 1 by default): two threads on a core another job holds fight for it and for the GIL (measured at
    load 4 on the demo: the three solves took 85 s with two threads, against ~14 s single-threaded)."""
    import scipy.linalg  # noqa: F401  (loads scipy's own BLAS now, so that the limit below covers it too)
    from threadpoolctl import threadpool_info, threadpool_limits

    granted = [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]
    with threadpool_limits(1, user_api="blas"):
        _calibrate(job, threads=max(1, min(granted, default=1)))


def _calibrate(job, threads: int = 1) -> None:
    from b2luca.reco.geometry import nominal_geometry
    from b2luca.reco.measurements import load_constants
    from calibrations._common import first_exprun, require_files

    cfg = {**settings.expert_config, **job.expert_config}
    geom = nominal_geometry()
    exprun = first_exprun(job.requested_iov)
    translator = timedep_translator(cfg, geom)
    auto = str(cfg.get("auto_boundaries", "off"))
    if auto not in AUTO_MODES:
        raise ValueError(f"{settings.name}: expert_config key 'auto_boundaries': expected one of {AUTO_MODES}, "
                         f"got {auto!r}")
    from calibrations.validations.vxdcdc_alignment import mode_requirements

    mode_requirements(cfg.get("max_weak_mode_error"))  # a bad requirement: one clear error before the fit
    # start from the alignment in force before this bucket, never from this calibration's own earlier result
    # (a --rerun must reproduce the first run, not iterate on it)
    chain = job.database_chain.without_bucket_results(settings.produced_payloads)
    constants = load_constants(chain, exprun, names=RECO_PAYLOADS)
    inputs = {name: list(job.input_files.get(name, [])) for name in collection_names}
    require_files([f for v in inputs.values() for f, _ in v], settings.name)
    timing = {"read": 0.0, "track_fit_and_records": 0.0, "label_translation": 0.0, "solve": 0.0, "monitor": 0.0}
    t0 = time.perf_counter()
    raws = read_inputs(inputs, cfg)
    timing["read"] = time.perf_counter() - t0
    first = (exprun.exp, exprun.run)
    fit = fit_iterations(raws, constants, translator, cfg, geom, first, job.log, timing, threads=threads)
    proposed: list[dict[str, Any]] = []
    if auto != "off":
        proposed = propose_boundaries(fit, cfg, geom, timing)
        for b in proposed:
            job.log.info("%s: per-run monitor proposes a boundary for %s at run %d,%d (jump %.1f um, %.1f sigma)%s",
                         settings.name, b["part"], b["exp"], b["run"], b["jump_um"], b["significance"],
                         "; applied" if auto == "apply" else "")
        if auto == "apply" and proposed:
            translator = add_boundaries(translator, proposed)
            fit = fit_iterations(raws, fit["start"], translator, cfg, geom, first, job.log, timing,
                                 previous=fit, threads=threads)
            fit["trend_before_apply"] = fit["previous_trend"]
    store_payloads(job, fit, translator, geom, first)
    if fit["constraints"]:
        from b2luca.alignment.constraints import write_constraints

        write_constraints(Path(job.work_dir) / "frame_constraints.txt", fit["constraints"])
    summary = {"iterations": fit["iterations"], "converged": fit["converged"],
               "timedep": [{"part": t.part, "boundaries": [list(b) for b in t.boundaries]} for t in translator.timedep],
               "auto_boundaries": auto, "proposed_boundaries": proposed, "trend": fit.get("trend"),
               # the intervals (first runs) whose frame constraints fix the frame; a later interval that is not
               # one of them is in the frame of the latest one before it (the validation's truth_in_frame)
               "frame_runs": fit.get("frame_runs", []),
               "trend_before_apply": fit.get("trend_before_apply"), "timing_s": timing}
    (Path(job.work_dir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=float))


def read_inputs(inputs: dict, cfg: dict) -> list[tuple[str, tuple[int, int], dict]]:
    """(collection, (exp, run), raw trees) of the input files read, each cut to its first events: at most
    ``<name>.max_processed_events_per_file`` per file and ``<name>.max_processed_events`` in all, spread over the
    runs (:func:`b2luca.input_sample.select_events`; <= 0: no cap).  A file is read only when its run still needs
    events."""
    from b2luca.input_sample import select_events
    from b2luca.reco.raw import first_events, read_raw

    raws = []
    read: dict[Path, dict] = {}  # files looked at by select_events, until used

    def count(f: Path) -> int:
        read[f] = read_raw([f], ("event", "pxd", "svd", "cdc"))  # the trees the track fit reads
        return int(read[f]["event"]["event"].size)

    for name, entries in inputs.items():
        limit = int(cfg.get(f"{name}.max_processed_events_per_file", -1))
        if limit == 0:
            continue
        picked = select_events([(Path(f), er) for f, er in entries], count,
                               int(cfg.get(f"{name}.max_processed_events", -1)), limit)
        for f, er, n in picked:
            raw = read.pop(f)
            if n < raw["event"]["event"].size:
                raw = first_events(raw, n)
            raws.append((name, (int(er.exp), int(er.run)), raw))
        read.clear()
    return raws


# --- labels, parts and time dependence ---------------------------------------------------------------------
def base_labels(geom) -> tuple[np.ndarray, np.ndarray]:
    """Global labels (212, 6) of the VXD sensor parameters and (56, 3) of the CDC layer parameters."""
    vxd = geom.sensor_id.astype(np.int64)[:, None] * VXD_LABEL_FACTOR + np.arange(1, 7)
    cdc = CDC_LABEL_BASE + np.arange(geom.n_cdc_layers)[:, None] * 10 + np.arange(1, 4)
    return vxd, cdc


def part_labels(geom) -> dict[str, np.ndarray]:
    """The labels of each part of :data:`b2luca.reco.parts.PARTS`."""
    from b2luca.reco.parts import PARTS, vxd_part_mask

    vxd, cdc = base_labels(geom)
    return {p: (cdc.ravel() if p == "CDC" else vxd[vxd_part_mask(geom, p)].ravel()) for p in PARTS}


def timedep_translator(cfg: dict, geom):
    """The label translator of the ``timedep`` / ``payload_boundaries`` configuration (errors name the key).

    ``payload_boundaries`` makes the VXD (as a whole) and the CDC time dependent."""
    from b2luca.alignment.timedep import parse_timedep
    from b2luca.reco.parts import PARTS

    parts = parse_timedep({"timedep": cfg.get("timedep") or []}, PARTS, source=settings.name)
    whole = parse_timedep({"payload_boundaries": cfg.get("payload_boundaries") or []}, ("VXD", "CDC"),
                          source=settings.name)
    merged: dict[str, set] = {}
    for t in parts + whole:
        merged.setdefault(t.part, set()).update(t.boundaries)
    return _translator(geom, resolve_parts(merged))


#: the smallest parts (every part of b2luca.reco.parts.PARTS is a union of these) and what each part covers
ATOMS = ("PXD+X", "PXD-X", "SVD+X", "SVD-X", "CDC")
COVER = {"VXD": frozenset(ATOMS[:4]), "PXD": frozenset(ATOMS[:2]), "SVD": frozenset(ATOMS[2:4]),
         **{a: frozenset([a]) for a in ATOMS}}


def resolve_parts(bounds: dict[str, set]) -> dict[str, tuple]:
    """Disjoint time-dependent parts from possibly nested ones: each half shell / the CDC gets the boundaries of
    every configured part containing it; parts with the same boundaries are named by the largest part covering
    them exactly (``{"VXD": {5}, "PXD": {7}}`` -> PXD from 5 and 7, SVD from 5)."""
    atom = {a: set().union(*(b for p, b in bounds.items() if a in COVER[p])) for a in ATOMS}
    groups: dict[tuple, set] = {}
    for a, b in atom.items():
        if b:
            groups.setdefault(tuple(sorted(b)), set()).add(a)
    out: dict[str, tuple] = {}
    for b, atoms in groups.items():
        for name in sorted(COVER, key=lambda n: -len(COVER[n])):
            if COVER[name] <= atoms:
                out[name] = b
                atoms -= COVER[name]
    return out


def _translator(geom, bounds: dict):
    from b2luca.alignment.timedep import LabelTranslator, TimedepPart

    return LabelTranslator(part_labels(geom), [TimedepPart(p, b) for p, b in bounds.items()])


def add_boundaries(translator, proposed: list[dict[str, Any]]):
    """A translator with the ``proposed`` boundaries added to their parts."""
    from b2luca.reco.geometry import nominal_geometry

    bounds = {t.part: set(t.boundaries) for t in translator.timedep}
    for b in proposed:
        bounds.setdefault(b["part"], set()).add((b["exp"], b["run"]))
    return _translator(nominal_geometry(), resolve_parts(bounds))


def _key(translator, exprun: tuple[int, int]) -> tuple[int, ...]:
    return tuple(translator.intervals(exprun))


#: track candidates per joint track fit: files of one (collection, interval) are fitted together up to about this
#: many (one chunk of the track fit): small files share the fixed cost of a fit call, and the temporaries of a
#: call (dense local derivatives, the solver's record chunk) stay bounded however many files there are
FIT_BATCH_CANDIDATES = 1000


def group_inputs(raws, translator, batch: int = FIT_BATCH_CANDIDATES) -> list[dict[str, Any]]:
    """The files of :func:`read_inputs` in batches of one collection and constants interval, in input order, each
    batch consecutive files of that (collection, interval) with up to ``batch`` track candidates in all (a larger
    file alone).  Per batch: ``name``, ``key`` (interval key), ``runs`` ((exp, run) of each file), ``raw`` (the
    files joined, :func:`join_raws`) and ``offsets`` (the event range of each file in the joined ``raw``)."""
    order: dict[tuple, list] = {}
    for name, er, raw in raws:
        order.setdefault((name, _key(translator, er)), []).append((er, raw))
    groups = []
    for (name, key), files in order.items():
        for part in _bounded_groups([int(np.sum(r["event"]["n_cand"])) for _, r in files], batch):
            raw, offsets = join_raws([files[i][1] for i in part])
            groups.append({"name": name, "key": key, "runs": [files[i][0] for i in part], "raw": raw,
                           "offsets": offsets})
    return groups


def records_per_run(groups: list[dict[str, Any]]) -> list[tuple[tuple[int, int], Any, str]]:
    """(run, records, collection) per collection and run, from the joint fits of :func:`group_inputs`' groups:
    each group's records cut back into its files (a file's records are contiguous, in file order) and the files of
    one run concatenated in input order."""
    from b2luca.alignment import concat_records
    from b2luca.alignment.select import split_records

    per_run: dict[tuple, list] = {}
    for g in groups:
        recs = g["records"]
        if recs is None:
            continue
        rf = g["record_file"]
        if rf.size and (rf[0] < 0 or np.any(np.diff(rf) < 0)):
            raise RuntimeError(f"{settings.name}: records of the joint fit of {g['name']} are not in file order")
        bounds = np.searchsorted(rf, np.arange(len(g["runs"]) + 1))
        for er, piece in zip(g["runs"], split_records(recs, bounds)):
            if piece.n_records:
                per_run.setdefault((g["name"], er), []).append(piece)
    return [(er, p[0] if len(p) == 1 else concat_records(p), name) for (name, er), p in per_run.items()]


# --- the iterated global fit --------------------------------------------------------------------------------
def fit_iterations(raws, start, translator, cfg: dict, geom, first: tuple[int, int], log, timing: dict,
                   previous: dict | None = None, threads: int = 1) -> dict[str, Any]:
    """Refit tracks and solve until the corrections are compatible with their errors (or ``max_iterations``).
    ``threads``: the solver's data-pass threads.

    ``start``: the constants to start from (Constants, or {interval key: Constants} from an earlier fit whose
    intervals are refined by ``translator``).  Returns constants per interval key, errors, per-iteration changes,
    the records of the last iteration (per collection and run: :func:`records_per_run`) and the per-run trend of
    the parts."""
    from b2luca.alignment import AlignmentProblem, solve
    from b2luca.alignment.select import drop_rows, rows_with_labels
    from b2luca.reco.geometry import NOMINAL_BEAMSPOT_SIZE
    from b2luca.reco.track_model import BeamSpotConstraint

    vxd_lab, cdc_lab = base_labels(geom)
    runs = sorted({er for _, er, _ in raws} | {first})
    starts = {first} | {b for t in translator.timedep for b in t.boundaries if b > first}
    keys = {_key(translator, r): r for r in sorted(runs + sorted(starts), reverse=True)}  # key -> a run of it
    if isinstance(start, dict):  # refine: each new interval starts from the constants of its run's old interval
        old = previous["translator"] if previous else translator
        consts = {k: start[_key(old, r)] for k, r in keys.items()}
    else:
        consts = {k: start for k in keys}
    ps, pr = float(cfg["presigma_shift_mm"]), float(cfg["presigma_rotation"])
    presig = {**{int(lab): ps if k < 3 else pr for row in vxd_lab for k, lab in enumerate(row)},
              **{int(lab): ps if k < 2 else pr for row in cdc_lab for k, lab in enumerate(row)}}
    base = np.array(sorted(presig), np.int64)
    full = translator.all_labels(base)
    sigma = np.array([presig[int(b)] for b in translator.split(full)[0]])
    # the presigma prior (off by default) holds the TOTAL correction of this calibration (not each iteration's
    # step), so the weak modes it regularises do not walk further with every iteration: accumulated corrections
    acc = np.zeros(full.size)
    if previous is not None:  # refined intervals start from the accumulated corrections of their old interval
        old_acc = dict(zip(previous["labels"].tolist(), previous["acc"].tolist()))
        index = {lab: i for i, lab in enumerate(full.tolist())}
        for r in keys.values():
            for n_, o_ in zip(translator.translate(base, r).tolist(), previous["translator"].translate(base, r).tolist()):
                acc[index[n_]] = old_acc.get(o_, 0.0)
    # the beam-spot position (x, y) is fitted with the alignment (one value for the bucket)
    beam = np.asarray(next(iter(consts.values())).beam_position, float).copy()
    history: list[dict[str, Any]] = []
    converged = False
    errs: dict[int, float] = {}
    groups = group_inputs(raws, translator)
    last_corr: dict[int, float] = {}
    constraints: list = []
    frame_sensors: dict = {}
    frame_runs: list = []
    cut = float(cfg.get("convergence_pull", 3.0))
    for iteration in range(int(cfg["max_iterations"])):
        bs = (BeamSpotConstraint(position=(float(beam[0]), float(beam[1])),
                                 size=(float(NOMINAL_BEAMSPOT_SIZE[0]), float(NOMINAL_BEAMSPOT_SIZE[1])),
                                 labels=BEAM_SPOT_LABELS) if cfg["beam_spot_constraint"] else None)
        records, used, chi2s = [], 0, []
        used_by_sample = dict.fromkeys(collection_names, 0)
        for g in groups:  # one track fit per batch of files of one (collection, interval)
            t0 = time.perf_counter()
            recs, n, c2, event = track_records(g["raw"], consts[g["key"]], cfg, g["name"], beam_spot=bs,
                                               warm=g.setdefault("warm", {}))
            t1 = time.perf_counter()
            timing["track_fit_and_records"] += t1 - t0
            g["records"] = None
            if recs is not None:  # the labels depend on the interval only: one translation for all its files
                g["records"] = translator.translate_records(recs, g["runs"][0])
                g["record_file"] = np.searchsorted(g["offsets"], event, side="right") - 1
                records.append(g["records"])
                used += n
                used_by_sample[g["name"]] = used_by_sample.get(g["name"], 0) + int(n)
                chi2s.append(c2)
            timing["label_translation"] += time.perf_counter() - t1
        if not records:
            raise RuntimeError(f"{settings.name}: no usable tracks in {len(raws)} files")
        t0 = time.perf_counter()
        measured, entries = np.unique(np.concatenate([r.glb_label for r in records]), return_counts=True)
        frame_labels = measured[entries >= int(cfg["min_entries"])]  # the fitted (not fixed) parameters
        # hits on elements held fixed (too few entries) would pull their tracks and bias the fitted elements
        unfitted = measured[entries < int(cfg["min_entries"])]
        dropped = 0
        if unfitted.size:
            masks = [rows_with_labels(r, unfitted) for r in records]
            dropped = int(sum(m.sum() for m in masks))
            records = [drop_rows(r, m) for r, m in zip(records, masks)]
            for g, r in zip((g for g in groups if g["records"] is not None), records):
                g["records"] = r
        constraints, frame_sensors, frame_runs = frame_constraints_per_interval(consts, keys, translator, geom,
                                                                               frame_labels) \
            if cfg["frame_constraints"] else ([], {}, [])
        # the prior only for labels the data measure (as pede's presigma: a label without data stays out of the fit)
        seen = np.isin(full, measured) & (sigma > 0)
        prior = [prior_records(full[seen], acc[seen], sigma[seen])] if seen.any() else []
        result = solve(AlignmentProblem(records=records + prior, method=str(cfg["method"]), iterations=1,
                                        constraints=constraints, entries=int(cfg["min_entries"]),
                                        # (the covariance of the last iteration only: computed after the loop)
                                        covariance="deferred" if cfg.get("store_covariance", True) else False,
                                        threads=threads))
        timing["solve"] += time.perf_counter() - t0
        corr = dict(zip(result.labels.tolist(), result.corrections.tolist()))
        acc = acc + np.array([corr.get(int(x), 0.0) for x in full])
        e = result.errors if result.errors is not None else np.full(result.labels.size, np.nan)
        e = np.where(e > 0, e, np.nan)  # parameters left fixed (fewer than min_entries hits) have no error
        errs = dict(zip(result.labels.tolist(), e.tolist()))
        pulls = np.abs(result.corrections) / e
        beam[:2] += np.array([corr.get(lab, 0.0) for lab in BEAM_SPOT_LABELS])
        for k, r in keys.items():
            dv = np.array([corr.get(int(x), 0.0) for x in translator.translate(vxd_lab.ravel(), r)]).reshape(vxd_lab.shape)
            dc = np.array([corr.get(int(x), 0.0) for x in translator.translate(cdc_lab.ravel(), r)]).reshape(cdc_lab.shape)
            consts[k] = replace(consts[k], vxd_params=consts[k].vxd_params + dv, cdc_params=consts[k].cdc_params + dc,
                                beam_position=beam.copy())
        shifts = np.abs(result.corrections[(result.labels % 10) <= 3])  # translations (VXD du,dv,dw; CDC dx,dy)
        step = {"iteration": iteration + 1, "tracks": used, "unfitted_labels": int(unfitted.size), "dropped_hits": dropped,
                "tracks_by_sample": used_by_sample,
                "median_chi2_ndf": float(np.median(np.concatenate(chi2s))),
                "solver_chi2_ndf": float(result.chi2_ndf),
                "beam_spot_xy_um": [1e3 * float(beam[0]), 1e3 * float(beam[1])], "max_shift_um": 1e3 * float(shifts.max(initial=0.0)),
                "rms_shift_um": 1e3 * float(np.sqrt(np.mean(shifts ** 2))) if shifts.size else 0.0,
                "max_pull": float(np.nanmax(pulls)) if np.isfinite(pulls).any() else float("nan"),
                "rms_pull": float(np.sqrt(np.nanmean(pulls ** 2))) if np.isfinite(pulls).any() else float("nan")}
        history.append(step)
        log.info("%s iteration %d: %d tracks, median chi2/ndf %.3f before, solver chi2/ndf %.3f, max |shift| %.1f um, "
                 "max |correction/error| %.2f", settings.name, iteration + 1, used, step["median_chi2_ndf"],
                 step["solver_chi2_ndf"], step["max_shift_um"], step["max_pull"])
        last_corr = corr
        if step["max_pull"] < cut:
            converged = True
            break
    if not converged:
        log.warning("%s: not converged after %d iterations (max |correction/error| %.2f >= convergence_pull %g)",
                    settings.name, len(history), history[-1]["max_pull"], cut)
    fit = {"consts": consts, "keys": keys, "errors": errs, "iterations": history, "converged": converged,
           "records": [], "corrections": last_corr, "translator": translator, "start": consts,
           "labels": full, "acc": acc, "constraints": constraints, "frame_sensors": frame_sensors,
           "frame_runs": [list(r) for r in frame_runs],
           "covariance": _final_covariance(result, timing)}
    if previous is not None:
        fit["previous_trend"] = previous.get("trend")
        fit["iterations"] = previous["iterations"] + history
    t0 = time.perf_counter()
    fit["records"] = per_run = records_per_run(groups)
    fit["trend"] = part_trend(per_run, last_corr, cfg, geom, threads=threads)
    timing["monitor"] += time.perf_counter() - t0
    return fit


def _final_covariance(result, timing: dict) -> tuple:
    """(labels, covariance) of the last iteration's fit ((None, None) without ``store_covariance``); its time
    counts as solve time."""
    deferred = result.info.get("covariance_deferred")
    if deferred is None:
        return None, None
    t0 = time.perf_counter()
    out = deferred()
    timing["solve"] += time.perf_counter() - t0
    return out


def frame_constraints_per_interval(consts: dict, keys: dict, translator, geom,
                                   measured: np.ndarray) -> tuple[list, dict]:
    """The frame constraints (:func:`b2luca.alignment.constraints.frame_constraints`) on the VXD labels of the
    first interval with data, given its constants in force, repeated (on the per-interval labels,
    :meth:`LabelTranslator.translate`) for every other interval that is an independent copy of the whole
    tracking system (all its VXD and CDC labels per-interval, e.g. ``payload_boundaries``): there the overall
    motion is again free.  An interval that shares parts with the first (e.g. only the PXD time dependent) is
    tied to it by the tracks through the shared parts: the frame is already fixed, and repeating the constraints
    there would force the moving part's overall position to be the same in every interval.  Only sensors whose
    six parameters are all fitted (in ``measured``) define the frame.  Returns (constraints, {interval key:
    (S,) bool sensors of the frame}, first runs (exp, run) of the intervals whose constraints define a frame)."""
    from b2luca.alignment.constraints import frame_constraints

    vxd_lab, cdc_lab = base_labels(geom)
    every = np.concatenate([vxd_lab.ravel(), cdc_lab.ravel()])
    out: list = []
    sensors: dict = {}
    ref: np.ndarray | None = None
    for k, r in sorted(keys.items(), key=lambda kv: kv[1]):
        mine = translator.translate(every, r)
        if not np.isin(mine, measured).any():
            continue
        if ref is not None and np.isin(mine, ref).any():
            continue
        ref = mine if ref is None else ref
        used = np.isin(translator.translate(vxd_lab.ravel(), r), measured).reshape(vxd_lab.shape).all(1)
        sensors[k] = used
        for c in frame_constraints(geom, consts[k].vxd_params, sensors=used):
            labels = translator.translate(c.labels, r)
            out.append(replace(c, labels=labels,
                               origin=f"{c.origin} (interval {list(k)})" if translator.active else c.origin))
    first = next(iter(sensors.values())) if sensors else None
    return out, {k: sensors.get(k, first) for k in keys}, sorted(tuple(keys[k]) for k in sensors)


def prior_records(labels: np.ndarray, acc: np.ndarray, sigma: np.ndarray):
    """The presigma prior as Mille records: one measurement per label, residual −acc, derivative 1, error sigma,
    i.e. χ² += ((acc + Δ) / sigma)² for the total correction acc + Δ (pede's presigma acts on Δ alone)."""
    from b2luca.alignment import records_from_dense

    n = labels.size
    return records_from_dense(-acc, sigma, np.zeros((n, 0)), labels[:, None], np.ones((n, 1)),
                              np.arange(n + 1, dtype=np.int64))


# --- per-run monitor and automatic boundaries ---------------------------------------------------------------
def part_trend(per_run, corrections: dict, cfg: dict, geom, threads: int = 1) -> dict[str, Any]:
    """Per run, the rigid translation (x, y, z in um, with errors) of each part of ``auto_boundaries_parts``
    relative to ``auto_boundaries_reference`` (the frame of the monitor), fitted to the track residuals of the
    last iteration after its corrections.

    One fit for all runs: every record gets, instead of its sensor/layer derivatives, the derivatives of its
    part's translation (chained through the sensor rotations) under a per-run label, with its track parameters
    as local parameters, so a movement is attributed to the part that moved (not smeared into the tracks).
    ``per_run``: (run, records, collection) items (:func:`records_per_run`; several items of one run are fine),
    put together, run after run, in record sets of up to the solver's chunk of rows (``RECORD_CHUNK_MEAS``; not one
    set per run: hundreds of runs cost no more than a few)."""
    from b2luca.alignment import AlignmentProblem, MilleRecords, ParameterSpec, concat_records, solve
    from b2luca.alignment.problem import RECORD_CHUNK_MEAS
    from b2luca.alignment.timedep import LabelTranslator

    parts = [str(p) for p in cfg.get("auto_boundaries_parts") or []]
    ref = str(cfg.get("auto_boundaries_reference", "CDC"))
    labels = part_labels(geom)
    bad = [p for p in parts + [ref] if p not in labels]
    if bad:
        raise ValueError(f"{settings.name}: expert_config keys 'auto_boundaries_parts'/'auto_boundaries_reference': "
                         f"unknown part(s) {bad}; known: {', '.join(labels)}")
    free = [p for p in parts if p != ref]
    # collision tracks only (when there are any): every run is then measured with the same kind of tracks, so
    # the weak modes the static fit leaves do not differ between runs (a cosmic-only run is not measured; with
    # the cosmics of the physics runs included, the measured jump of a moved PXD is biased low)
    collisions = [(er, recs) for er, recs, name in per_run if name != "cosmic_calib"]
    use = collisions or [(er, recs) for er, recs, _ in per_run]
    runs = sorted({er for er, _ in use})
    run_index = {er: i for i, er in enumerate(runs)}
    corr_lab = np.array(sorted(corrections), np.int64)
    corr_val = np.array([corrections[int(k)] for k in corr_lab.tolist()], float)
    dense = []
    for part in _bounded_groups([recs.n_meas for _, recs in use], RECORD_CHUNK_MEAS):
        chunk = [use[i] for i in part]  # several runs per record set, of bounded size
        recs = chunk[0][1] if len(chunk) == 1 else concat_records([r for _, r in chunk])
        run_m = np.repeat([run_index[er] for er, _ in chunk], [r.n_meas for _, r in chunk])  # run of each row
        base, _ = LabelTranslator.split(recs.glb_label)
        c = np.zeros(recs.glb_label.size)
        if corr_lab.size:
            at = np.minimum(np.searchsorted(corr_lab, recs.glb_label), corr_lab.size - 1)
            hit = corr_lab[at] == recs.glb_label
            c[hit] = corr_val[at[hit]]
        y = recs.value - np.bincount(recs.glb_meas, weights=recs.glb_der * c, minlength=recs.n_meas)
        k = base % 10
        nf = len(free)
        der = np.zeros(recs.n_meas * 3 * nf)
        for ip, p in enumerate(free):
            sel = np.isin(base, labels[p]) & (k <= (2 if p == "CDC" else 3))
            gm = recs.glb_meas[sel] * (3 * nf) + 3 * ip
            if p == "CDC":
                der += np.bincount(gm + k[sel] - 1, weights=recs.glb_der[sel], minlength=der.size)
            else:
                s_idx = geom.sensor_index(base[sel] // VXD_LABEL_FACTOR)
                d = recs.glb_der[sel, None] * geom.rot[s_idx, :, k[sel] - 1]  # d(model)/d(global translation)
                for j in range(3):
                    der += np.bincount(gm + j, weights=d[:, j], minlength=der.size)
        der = der.reshape(recs.n_meas, 3 * nf)
        lab = _trend_label(run_m[:, None], np.repeat(np.arange(nf), 3)[None, :], np.tile(np.arange(3), nf)[None, :])
        gm, gi = np.nonzero(der)
        dense.append(MilleRecords(rec_ptr=recs.rec_ptr, value=y, sigma=recs.sigma, loc_meas=recs.loc_meas,
                                  loc_index=recs.loc_index, loc_der=recs.loc_der, glb_meas=gm.astype(np.int64),
                                  glb_label=lab[gm, gi].astype(np.int64), glb_der=der[gm, gi]))
    out: dict[str, Any] = {"runs": [list(r) for r in runs], "reference": ref, "parts": {}}
    if not free or not dense:
        return out
    spec = {int(lab): ParameterSpec(int(lab), 0.0, 1.0) for lab in  # 1 mm: only keeps unmeasured directions finite
            _trend_label(np.arange(len(runs))[:, None, None], np.arange(len(free))[None, :, None],
                         np.arange(3)[None, None, :]).ravel()}
    res = solve(AlignmentProblem(records=dense, method="sparse", iterations=1, parameters=spec, threads=threads))
    val = dict(zip(res.labels.tolist(), (1e3 * res.corrections).tolist()))
    err = dict(zip(res.labels.tolist(), (1e3 * res.errors if res.errors is not None
                                         else np.full(res.labels.size, np.nan)).tolist()))
    for ip, p in enumerate(free):
        labs = [[int(_trend_label(i, ip, j)) for j in range(3)] for i in range(len(runs))]
        # a direction no track measures (CDC z; presigma-dominated error) is reported as NaN
        v = np.array([[val.get(x, np.nan) for x in row] for row in labs])
        e = np.array([[err.get(x, np.nan) for x in row] for row in labs])
        unmeasured = ~(e < 500.0)
        v[unmeasured], e[unmeasured] = np.nan, np.nan
        out["parts"][p] = {"shift_um": v.tolist(), "error_um": e.tolist()}
    return out


def _bounded_groups(sizes: list[int], limit: int) -> list[range]:
    """Consecutive items in groups of at most ``limit`` in size (an item larger than ``limit`` alone), as index
    ranges: the batching of the track fit's files (:func:`group_inputs`) and of the monitor's record sets."""
    out: list[range] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > limit:
            out.append(range(start, i))
            start, total = i, 0
        total += size
    if sizes:
        out.append(range(start, len(sizes)))
    return out


def _trend_label(run_index, part_index, comp):
    """Label of the per-run monitor: translation component ``comp`` of part ``part_index`` in run ``run_index``."""
    return 1 + np.asarray(comp) + 3 * np.asarray(part_index) + 100 * np.asarray(run_index)


def propose_boundaries(fit: dict, cfg: dict, geom, timing: dict) -> list[dict[str, Any]]:
    """Boundaries where a part's per-run translation jumps (see :func:`b2luca.alignment.timedep.find_jumps`)."""
    from b2luca.alignment.timedep import find_jumps

    t0 = time.perf_counter()
    trend = fit["trend"]
    runs = [tuple(r) for r in trend["runs"]]
    existing = {t.part: set(t.boundaries) for t in fit["translator"].timedep}
    out = []
    for p, tr in trend["parts"].items():
        for run, jump, sig in find_jumps(runs, np.array(tr["shift_um"]), np.array(tr["error_um"]),
                                         float(cfg["auto_boundaries_k_sigma"]),
                                         float(cfg["auto_boundaries_min_jump_um"])):
            if run in existing.get(p, set()):
                continue
            out.append({"part": p, "exp": run[0], "run": run[1], "jump_um": round(jump, 2),
                        "significance": round(sig, 1)})
    # every monitored part jumps at the same run: the reference (the monitor's frame) moved
    free = list(trend["parts"])
    ref = trend.get("reference")
    for run in sorted({(b["exp"], b["run"]) for b in out}):
        at = [b for b in out if (b["exp"], b["run"]) == run]
        if ref and len(free) > 1 and {b["part"] for b in at} == set(free) and run not in existing.get(ref, set()):
            out = [b for b in out if b not in at] + [
                {"part": ref, "exp": run[0], "run": run[1], "jump_um": round(-float(np.mean([b["jump_um"] for b in at])), 2),
                 "significance": min(b["significance"] for b in at)}]
    timing["monitor"] += time.perf_counter() - t0
    return out


# --- payloads, one IoV per interval -------------------------------------------------------------------------
def store_payloads(job, fit: dict, translator, geom, first: tuple[int, int]) -> None:
    """VXDAlignment and CDCAlignment, each once per interval of its time-dependent parts (open-ended last IoV)."""
    from b2luca.alignment.timedep import interval_ranges
    from b2luca.iov import IoV

    vxd_lab, cdc_lab = base_labels(geom)
    errs = fit["errors"]
    covs: dict[str, np.ndarray] = {}
    for payload, is_cdc in (("VXDAlignment", False), ("CDCAlignment", True)):
        bounds = sorted({b for t in translator.timedep if (t.part == "CDC") == is_cdc for b in t.boundaries})
        for lo, hi in interval_ranges(bounds, first):
            const = fit["consts"][_key(translator, lo)]
            labs = translator.translate((cdc_lab if is_cdc else vxd_lab).ravel(), lo)
            err = np.array([errs.get(int(x), np.nan) for x in labs]).reshape((cdc_lab if is_cdc else vxd_lab).shape)
            iov = IoV(lo[0], lo[1], -1, -1) if hi is None else IoV(lo[0], lo[1], hi[0], hi[1])
            if is_cdc:
                data = {"layer": np.arange(geom.n_cdc_layers, dtype=np.int32), "params": const.cdc_params,
                        "params_error": err}
            else:
                data = {"sensor_id": geom.sensor_id.astype(np.int32), "params": const.vxd_params, "params_error": err}
                fs = fit.get("frame_sensors", {}).get(_key(translator, lo))
                if fs is not None:  # the sensors that define the frame (truth_in_frame's ``sensors``)
                    data["frame_sensors"] = np.asarray(fs, np.int8)
                cov = packed_covariance(fit.get("covariance"), translator, geom, lo)
                if cov is not None:
                    covs[f"cov_{lo[0]}_{lo[1]}"] = cov
            job.output_db.store(payload, data, iov)
    path = Path(job.work_dir) / COV_FILE
    if covs:  # beside the payloads, not in them: ~8 MB per interval
        write_covariance(path, covs)
    else:  # no covariance this time: an earlier run's file must not be read as this result's
        path.unlink(missing_ok=True)


def write_covariance(path: Path, covs: dict[str, np.ndarray]) -> None:
    """Write the per-interval covariances (``cov_<exp>_<run>``: the interval starting at that run) to
    ``path`` atomically (a temporary file renamed into place: no half-written file looks complete)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **covs)
    tmp.replace(path)


def packed_covariance(cov_entry, translator, geom, exprun: tuple[int, int]) -> np.ndarray | None:
    """The (P, P) covariance (float32) of the packed VXD + CDC parameters of run ``exprun``
    (:class:`b2luca.alignment.weak_modes.ParameterLayout` order), from the fit's covariance of its free labels;
    rows/columns of parameters not fitted are NaN.  None when the fit has no covariance."""
    labels, cov = cov_entry if cov_entry is not None else (None, None)
    if labels is None or cov is None:
        return None
    vxd_lab, cdc_lab = base_labels(geom)
    packed = translator.translate(np.concatenate([vxd_lab.ravel(), cdc_lab.ravel()]), exprun)
    pos = np.searchsorted(labels, packed)
    pc = np.minimum(pos, labels.size - 1)
    hit = labels[pc] == packed
    out = np.full((packed.size, packed.size), np.nan, np.float32)
    idx = np.flatnonzero(hit)
    out[np.ix_(idx, idx)] = cov[np.ix_(pc[hit], pc[hit])]
    return out
