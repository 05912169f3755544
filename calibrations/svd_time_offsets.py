"""SVD time offsets per sensor.

Aligns the hit time of every SVD sensor to the event time, using the hits of hadronic events, and
stores one offset per sensor in the SVDTimeOffsets payload (hit time - offset = event time).

Method: in the toy detector the event time is 0 for every event and the SVD hit time is
``offset[sensor] + resolution``; the offset of a sensor is the mean hit time of its hits, after an
iterative rejection of hits further than ``outlier_sigma`` RMS from the sensor mean; its error is
RMS/sqrt(N).  Sensors with fewer than ``min_hits_per_sensor`` hits (default 20: error <= 0.7 ns for the
3 ns hit-time resolution, against a 5 ns spread of the offsets) keep the offset in force (from the
database chain, nominal 0) and are flagged with ``n_hits`` below the threshold and a NaN error.
Extra payload keys (ignored by reconstruction): ``offset_error`` [ns], ``n_hits``.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="SVDTimeOffsets",
                               expert_username="svd_expert",
                               subsystem="svd",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=["hadron_calib"],
                               input_data_filters={"hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"],
                                                                    INPUT_DATA_FILTERS["Run Type"]["physics"],
                                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                                                                    INPUT_DATA_FILTERS["Magnet"]["On"]]},
                               depends_on=[],
                               expert_config={"max_files_per_run": 5,
                                              "min_hits_per_sensor": 20,
                                              "outlier_sigma": 5.0},
                               produced_payloads=["SVDTimeOffsets"])

PAYLOAD = "SVDTimeOffsets"


def fit_offsets(sensor: np.ndarray, time: np.ndarray, min_hits: int, outlier_sigma: float,
                previous: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sensor offsets from hit (sensor VxdID, time) arrays; sensors below ``min_hits`` keep ``previous``."""
    from b2luca.reco.geometry import nominal_geometry

    ids = nominal_geometry().svd_sensor_ids.astype(np.int32)
    pos = np.searchsorted(ids, sensor)
    pos_c = np.clip(pos, 0, ids.size - 1)
    bad = ids[pos_c] != sensor
    if np.any(bad):
        raise ValueError(f"SVD hits on unknown sensor id(s) {np.unique(np.asarray(sensor)[bad])[:10].tolist()}")
    from calibrations._common import group_mean

    mean, error, _rms, n = group_mean(pos_c, time, ids.size, outlier_sigma=outlier_sigma)
    prev_ids = np.asarray(previous["sensor_id"])
    prev = np.zeros(ids.size)
    where = np.searchsorted(prev_ids, ids)
    ok_prev = (where < prev_ids.size) & (prev_ids[np.clip(where, 0, prev_ids.size - 1)] == ids)
    prev[ok_prev] = np.asarray(previous["offset"], dtype=float)[where[ok_prev]]
    good = n >= max(int(min_hits), 2)
    return {"sensor_id": ids, "offset": np.where(good, mean, prev),
            "offset_error": np.where(good, error, np.nan), "n_hits": n.astype(np.int32)}


def calibrate(job) -> None:
    """Compute the SVD time offsets from the hadron_calib raw hits and store them in job.output_db."""
    from calibrations._common import first_exprun, limit_files_per_run, previous_payload, read_branches, require_files

    cfg = job.expert_config
    files = limit_files_per_run(job.input_files.get("hadron_calib", []), cfg.get("max_files_per_run"))
    require_files(files, f"{settings.name}/hadron_calib")
    hits = read_branches(files, "svd", ["sensor", "time"])
    previous = previous_payload(job.database_chain, PAYLOAD, first_exprun(job.requested_iov))
    result = fit_offsets(hits["sensor"], hits["time"], int(cfg.get("min_hits_per_sensor", 20)),
                         float(cfg.get("outlier_sigma", 5.0)), previous)
    n_good = int(np.sum(np.isfinite(result["offset_error"])))
    if n_good == 0:
        raise RuntimeError(f"{settings.name}: no SVD sensor has {cfg.get('min_hits_per_sensor')} hits "
                           f"({hits['sensor'].size} hits in {len(files)} files)")
    job.log.info("%s: %d hits, %d/%d sensors calibrated, median error %.3f ns", settings.name,
                 hits["sensor"].size, n_good, result["sensor_id"].size, float(np.nanmedian(result["offset_error"])))
    job.output_db.store(PAYLOAD, result, job.output_iov)
