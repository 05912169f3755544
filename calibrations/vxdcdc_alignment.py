"""Full VXD and CDC alignment.

Simultaneous global alignment of the VXD sensors and CDC layers with b2luca's Millepede-style solver:
cosmic tracks through the whole detector, di-muons and hadronic tracks from the interaction point.
Local track parameters are eliminated per track, the global system is solved with constraints on
the weak modes. Results go to the VXDAlignment and CDCAlignment payloads. Needs the CDC time offsets, the SVD time
offsets and the PXD masks of this bucket (the track finding reads all three).

Implementation: tracks are fitted with :mod:`b2luca.reco.fit` (helix, no scattering kinks) with the
constants in force (database chain: the CDC T0s, SVD time offsets and PXD masks of this bucket); every fitted track becomes one Mille
record (residuals, 5 local derivatives, the 6 rigid-body derivatives of its VXD sensors / 3 of its
CDC layers) and :func:`b2luca.alignment.solve` solves for all 212 x 6 + 56 x 3 parameters at once.
Weak modes (global translations/rotations, which tracks alone cannot fix) are regularised with
presigmas ``presigma_shift_mm`` / ``presigma_rotation`` around the current values.  Hadron tracks
below ``min_momentum`` GeV are not used (the fit has no scattering model); tracks with
chi2/ndf > ``outlier_chi2_cut`` are rejected.  ``max_iterations`` outer iterations (refit tracks with
the corrected geometry, solve again).  Extra payload keys: ``params_error`` (same shape as params).
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

# events per file (0: the collection is not used; hadron tracks are soft and the fit has no scattering
# model; the solver's assembly time grows with the number of tracks)
default_config = {"cosmic_calib.max_processed_events_per_file": 200,
                  "hadron_calib.max_processed_events_per_file": 0,
                  "mumu_tight_or_highm_calib.max_processed_events_per_file": 250,
                  "method": "sparse",
                  "max_iterations": 1,
                  "outlier_chi2_cut": 50.0,
                  "min_momentum": 1.0,
                  "presigma_shift_mm": 0.1,
                  "presigma_rotation": 0.002}

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


def mille_records(raw, constants, cfg: dict, cosmic: bool):
    """Fit the track candidates of ``raw`` and return (MilleRecords, number of tracks used, chi2/ndf array)."""
    from b2luca.alignment import records_from_dense
    from b2luca.reco import helix as H
    from b2luca.reco.measurements import build_measurements
    from b2luca.reco.robust import fit_robust

    meas = build_measurements(raw, constants)
    if meas.n_tracks == 0:
        return None, 0, np.zeros(0)
    fit = fit_robust(meas, constants, row_keys=("residual", "local_derivs", "global_derivs", "global_labels"))
    meas = fit.meas
    assert fit.residual is not None and fit.local_derivs is not None
    assert fit.global_labels is not None and fit.global_derivs is not None
    chi2_ndf = fit.chi2 / np.maximum(fit.ndf, 1)
    good = (chi2_ndf < float(cfg["outlier_chi2_cut"])) & (fit.ndf > 5)
    if not cosmic:
        good &= H.momentum(fit.params) > float(cfg["min_momentum"])
    rows = good[meas.track]
    track = meas.track[rows]
    if not rows.any():
        return None, 0, chi2_ndf
    new_index = np.cumsum(good) - 1
    counts = np.bincount(new_index[track], minlength=int(good.sum()))
    rec_ptr = np.concatenate([[0], np.cumsum(counts)])
    recs = records_from_dense(fit.residual[rows], meas.sigma[rows], fit.local_derivs[rows],
                              fit.global_labels[rows], fit.global_derivs[rows], rec_ptr)
    return recs, int(good.sum()), chi2_ndf[good]


def calibrate(job) -> None:
    """Align the VXD sensors and CDC layers (see the module docstring); stores VXDAlignment and CDCAlignment."""
    from b2luca.alignment import AlignmentProblem, ParameterSpec, solve
    from b2luca.reco.geometry import nominal_geometry
    from b2luca.reco.measurements import load_constants
    from b2luca.reco.raw import read_raw
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
    vxd_labels = geom.sensor_id.astype(np.int64)[:, None] * VXD_LABEL_FACTOR + np.arange(1, 7)
    cdc_labels = CDC_LABEL_BASE + np.arange(geom.n_cdc_layers)[:, None] * 10 + np.arange(1, 4)
    ps, pr = float(cfg["presigma_shift_mm"]), float(cfg["presigma_rotation"])
    presig = {**{int(lab): ps if k < 3 else pr for row in vxd_labels for k, lab in enumerate(row)},
              **{int(lab): ps if k < 2 else pr for row in cdc_labels for k, lab in enumerate(row)}}
    vxd_err = np.full((geom.n_sensors, 6), np.nan)
    cdc_err = np.full((geom.n_cdc_layers, 3), np.nan)
    for iteration in range(int(cfg["max_iterations"])):
        records, used, chi2s = [], 0, []
        for name, raw in raws:
            recs, n, c2 = mille_records(raw, constants, cfg, cosmic=name == "cosmic_calib")
            if recs is not None:
                records.append(recs)
                used += n
                chi2s.append(c2)
        if not records:
            raise RuntimeError(f"{settings.name}: no usable tracks in {sum(map(len, inputs.values()))} files")
        problem = AlignmentProblem(records=records, method=str(cfg["method"]), iterations=1,
                                   parameters={lab: ParameterSpec(lab, 0.0, s) for lab, s in presig.items()})
        result = solve(problem)
        corr = dict(zip(result.labels.tolist(), result.corrections.tolist()))
        errs = dict(zip(result.labels.tolist(), (result.errors if result.errors is not None
                                                 else np.full(result.labels.size, np.nan)).tolist()))
        dv = np.array([[corr.get(int(lab), 0.0) for lab in row] for row in vxd_labels])
        dc = np.array([[corr.get(int(lab), 0.0) for lab in row] for row in cdc_labels])
        vxd_err = np.array([[errs.get(int(lab), np.nan) for lab in row] for row in vxd_labels])
        cdc_err = np.array([[errs.get(int(lab), np.nan) for lab in row] for row in cdc_labels])
        constants.vxd_params = constants.vxd_params + dv
        constants.cdc_params = constants.cdc_params + dc
        job.log.info("%s iteration %d: %d tracks, median chi2/ndf %.3f before, solver chi2/ndf %.3f, "
                     "max |shift| VXD %.1f um CDC %.1f um", settings.name, iteration + 1, used,
                     float(np.median(np.concatenate(chi2s))), result.chi2_ndf, 1e3 * np.abs(dv[:, :3]).max(),
                     1e3 * np.abs(dc[:, :2]).max())
    job.output_db.store("VXDAlignment", {"sensor_id": geom.sensor_id.astype(np.int32), "params": constants.vxd_params,
                                         "params_error": vxd_err}, job.output_iov)
    job.output_db.store("CDCAlignment", {"layer": np.arange(geom.n_cdc_layers, dtype=np.int32),
                                         "params": constants.cdc_params, "params_error": cdc_err}, job.output_iov)
