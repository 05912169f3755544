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
of its VXD sensors / 3 of its CDC layers; collision tracks add the beam-spot measurement (d0 against the
beam spot, error = the beam size seen by the track) with the beam-spot position (x, y) as two more
global parameters.  :func:`b2luca.alignment.solve` solves for all 212 x 6 + 56 x 3 (+ 2) parameters at
once.  Collision tracks down to a transverse momentum of ``min_pt`` GeV are used (the kinks give soft
tracks their weight; below 0.2 GeV curlers have CDC hits near their turning point that the model does
not describe); tracks with chi2/ndf > ``outlier_chi2_cut`` are rejected.  Parameters measured by fewer
than ``min_entries`` hits stay at their current values (pede's ``entries``; error NaN).

Global frame: fixed by six constraints (:func:`b2luca.alignment.constraints.frame_constraints`, written
to ``frame_constraints.txt`` in pede's format): the overall translation and rotation of the VXD sensors
against the nominal geometry are zero.  The CDC layers and the beam spot are measured relative to the
VXD, so the BeamSpot calibrated after the alignment is in this frame too
(:func:`b2luca.alignment.frame.truth_in_frame` expresses a truth in it).  No presigma regularisation by
default (``presigma_shift_mm`` / ``presigma_rotation`` > 0 adds soft priors around the current values,
for studies).  ``max_iterations`` outer iterations (refit tracks with the corrected geometry, solve
again).  Extra payload keys: ``params_error`` (same shape as params).
"""

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS
from calibrations.cdc_time_zeros import settings as cdc_t0
from calibrations.pxd_hot_dead_pixels import settings as pxd_masks
from calibrations.svd_time_offsets import settings as svd_t0

import numpy as np

collection_names = ["cosmic_calib", "mumu_tight_or_highm_calib", "hadron_calib"]

quality_flags = [INPUT_DATA_FILTERS["Run Type"]["physics"],
                 INPUT_DATA_FILTERS["Data Quality Tag"]["Good Or Recoverable"],
                 "NOT " + INPUT_DATA_FILTERS["Data Quality Tag"]["Bad For Alignment"],
                 INPUT_DATA_FILTERS["Magnet"]["On"]]

# events per file (0: the collection is not used).  The assembly time grows with the number of tracks and with
# the number of local parameters (5 + 2 per active kink: ~21 for collision tracks, ~37 for cosmics)
default_config = {"cosmic_calib.max_processed_events_per_file": 150,
                  "hadron_calib.max_processed_events_per_file": 30,
                  "mumu_tight_or_highm_calib.max_processed_events_per_file": 150,
                  "method": "sparse",
                  "max_iterations": 1,
                  "outlier_chi2_cut": 10.0,
                  "min_entries": 10,
                  "min_pt": 0.2,
                  "beam_spot_constraint": True,
                  "frame_constraints": True,
                  "presigma_shift_mm": 0.0,
                  "presigma_rotation": 0.0}

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
    from b2luca.alignment import records_from_dense
    from b2luca.reco.geometry import C_B
    from b2luca.reco.measurements import build_measurements
    from b2luca.reco.track_model import beam_spot_rows, fit_track_model

    meas = build_measurements(raw, constants)
    if meas.n_tracks == 0:
        return None, 0, np.zeros(0)
    model = fit_track_model(meas, constants, mass=SAMPLE_MASS[sample])
    chi2_ndf = model.chi2 / np.maximum(model.ndf, 1)
    good = (chi2_ndf < float(cfg["outlier_chi2_cut"])) & (model.ndf > 5)
    cosmic = sample == "cosmic_calib"
    if not cosmic:
        good &= C_B / np.maximum(np.abs(model.params[:, 2]), 1e-12) > float(cfg["min_pt"])
    use = np.flatnonzero(good)
    if not use.size:
        return None, 0, chi2_ndf[good]
    extra = beam_spot_rows(model, use, beam_spot) if beam_spot is not None and not cosmic else None
    recs = records_from_dense(*model.dense_rows(use, extra))
    return recs, int(use.size), chi2_ndf[good]


def read_samples(inputs: dict[str, list], cfg: dict) -> list[tuple[str, dict]]:
    """(collection, raw) per input file, cut to ``<collection>.max_processed_events_per_file`` events."""
    from b2luca.reco.raw import read_raw

    raws = []
    for name, files in inputs.items():
        limit = int(cfg.get(f"{name}.max_processed_events_per_file", -1))
        if limit == 0:
            continue
        for f in files:
            raw = read_raw([f])
            if 0 < limit < raw["event"]["event"].size:
                raw = {t: {k: v[c["gevent"] < limit] for k, v in c.items()} for t, c in raw.items()}
            raws.append((name, raw))
    return raws


def solve_alignment(raws: list[tuple[str, dict]], constants, cfg: dict, log=None) -> dict:
    """One alignment pass: fit the tracks of ``raws`` ((collection, raw) pairs) with ``constants``, solve.

    Returns {"vxd", "cdc": corrections (S, 6) / (L, 3); "vxd_error", "cdc_error"; "beam": beam-spot
    (x, y) after the pass [mm]; "used": tracks used per collection; "chi2_ndf": median track chi2/ndf
    before; "result": the :class:`b2luca.alignment.AlignmentResult`; "constraints": the frame
    constraints used}.  ``cfg``: the expert_config keys of this module."""
    from b2luca.alignment import AlignmentProblem, ParameterSpec, solve
    from b2luca.alignment.constraints import frame_constraints
    from b2luca.reco.geometry import NOMINAL_BEAMSPOT_SIZE, nominal_geometry
    from b2luca.reco.track_model import BeamSpotConstraint

    geom = nominal_geometry()
    vxd_labels = geom.sensor_id.astype(np.int64)[:, None] * VXD_LABEL_FACTOR + np.arange(1, 7)
    cdc_labels = CDC_LABEL_BASE + np.arange(geom.n_cdc_layers)[:, None] * 10 + np.arange(1, 4)
    ps, pr = float(cfg["presigma_shift_mm"]), float(cfg["presigma_rotation"])
    presig = {**{int(lab): ps if k < 3 else pr for row in vxd_labels for k, lab in enumerate(row)},
              **{int(lab): ps if k < 2 else pr for row in cdc_labels for k, lab in enumerate(row)}}
    params = {lab: ParameterSpec(lab, 0.0, s) for lab, s in presig.items() if s > 0}
    beam = np.asarray(constants.beam_position, float)[:2].copy()
    bs = (BeamSpotConstraint(position=(float(beam[0]), float(beam[1])),
                             size=(float(NOMINAL_BEAMSPOT_SIZE[0]), float(NOMINAL_BEAMSPOT_SIZE[1])),
                             labels=BEAM_SPOT_LABELS) if cfg["beam_spot_constraint"] else None)
    records, used, chi2s = [], {}, []
    for name, raw in raws:
        recs, n, c2 = mille_records(raw, constants, cfg, name, beam_spot=bs)
        if recs is not None:
            records.append(recs)
            used[name] = used.get(name, 0) + n
            chi2s.append(c2)
    if not records:
        raise RuntimeError(f"{settings.name}: no usable tracks in {len(raws)} files")
    constraints = frame_constraints(geom, constants.vxd_params) if cfg["frame_constraints"] else []
    problem = AlignmentProblem(records=records, method=str(cfg["method"]), iterations=1,
                               constraints=constraints, parameters=params, entries=int(cfg["min_entries"]))
    result = solve(problem)
    corr = dict(zip(result.labels.tolist(), result.corrections.tolist()))
    err_all = result.errors if result.errors is not None else np.full(result.labels.size, np.nan)
    # parameters left fixed (fewer than min_entries hits) have no error
    errs = dict(zip(result.labels.tolist(), np.where(err_all > 0, err_all, np.nan).tolist()))

    def table(labels, d):
        return np.array([[d.get(int(lab), 0.0 if d is corr else np.nan) for lab in row] for row in labels])

    return {"vxd": table(vxd_labels, corr), "cdc": table(cdc_labels, corr), "vxd_error": table(vxd_labels, errs),
            "cdc_error": table(cdc_labels, errs), "beam": beam + np.array([corr.get(lab, 0.0) for lab in BEAM_SPOT_LABELS]),
            "used": used, "chi2_ndf": float(np.median(np.concatenate(chi2s))), "result": result,
            "constraints": constraints}


def calibrate(job) -> None:
    """Align the VXD sensors and CDC layers (see the module docstring); stores VXDAlignment and CDCAlignment."""
    from b2luca.alignment.constraints import write_constraints
    from b2luca.reco.geometry import nominal_geometry
    from b2luca.reco.measurements import load_constants
    from calibrations._common import first_exprun, require_files

    cfg = {**settings.expert_config, **job.expert_config}
    geom = nominal_geometry()
    exprun = first_exprun(job.requested_iov)
    # start from the alignment in force before this bucket, never from this calibration's own earlier result
    # (a --rerun must reproduce the first run, not iterate on it)
    chain = job.database_chain.without_bucket_results(settings.produced_payloads)
    constants = load_constants(chain, exprun, names=RECO_PAYLOADS)
    inputs = {name: [p for p, _ in job.input_files.get(name, [])] for name in collection_names}
    require_files([f for v in inputs.values() for f in v], settings.name)
    raws = read_samples(inputs, cfg)
    vxd_err = np.full((geom.n_sensors, 6), np.nan)
    cdc_err = np.full((geom.n_cdc_layers, 3), np.nan)
    for iteration in range(int(cfg["max_iterations"])):
        out = solve_alignment(raws, constants, cfg)
        if out["constraints"]:
            write_constraints(job.work_dir / "frame_constraints.txt", out["constraints"])
        dv, dc = out["vxd"], out["cdc"]
        vxd_err, cdc_err = out["vxd_error"], out["cdc_error"]
        constants.vxd_params = constants.vxd_params + dv
        constants.cdc_params = constants.cdc_params + dc
        constants.beam_position = np.concatenate([out["beam"], np.asarray(constants.beam_position, float)[2:]])
        job.log.info("%s iteration %d: tracks used %s, median chi2/ndf %.3f before, solver chi2/ndf %.3f, "
                     "max |shift| VXD %.1f um CDC %.1f um, beam spot (x, y) in the frame (%.1f, %.1f) um",
                     settings.name, iteration + 1, out["used"], out["chi2_ndf"], out["result"].chi2_ndf,
                     1e3 * np.abs(dv[:, :3]).max(), 1e3 * np.abs(dc[:, :2]).max(),
                     1e3 * out["beam"][0], 1e3 * out["beam"][1])
    job.output_db.store("VXDAlignment", {"sensor_id": geom.sensor_id.astype(np.int32), "params": constants.vxd_params,
                                         "params_error": vxd_err}, job.output_iov)
    job.output_db.store("CDCAlignment", {"layer": np.arange(geom.n_cdc_layers, dtype=np.int32),
                                         "params": constants.cdc_params, "params_error": cdc_err}, job.output_iov)
