"""PXD hot and dead pixel masks.

Counts pixel occupancy in random-trigger events and classifies every toy pixel (PXDMasks ``status``:
0 good, 1 hot, 2 dead).  Per sensor the normal occupancy per event is the median pixel occupancy
(robust against hot pixels); with N events a good pixel's count is Poisson(mu = occupancy * N).

* hot: count >= ``hot_occupancy_factor`` * mu and Poisson P(X >= count | mu) < ``hot_p_value``;
* dead: a dead pixel never fires, so count > 0 means alive.  A pixel with count 0 is dead when the
  posterior probability of being dead exceeds 1/2, with the prior ``dead_prior_fraction`` for pixels
  the mask in force (database chain: the experts' local mask) calls good, and ``known_dead_prior`` for
  those it calls dead: dead iff prior * 1 > (1 - prior) * exp(-mu).  With little data (small mu) the
  known mask therefore wins, with enough data the data win.
* fewer than ``min_events`` events: the calibration fails (nothing sensible can be said).

Extra payload keys (ignored by reconstruction): ``n_events`` (1,), ``occupancy`` (40,) normal
occupancy per event per sensor, ``counts`` (40, 7500) int32 the pixel counts.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="PXDHotDeadPixels",
                               expert_username="pxd_expert",
                               subsystem="pxd",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=["random_calib"],
                               input_data_filters={"random_calib":
                                                   [INPUT_DATA_FILTERS["Data Tag"]["random_calib"],
                                                    INPUT_DATA_FILTERS["Run Type"]["physics"],
                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good Or Recoverable"],
                                                    INPUT_DATA_FILTERS["Magnet"]["Either"]]},
                               depends_on=[],
                               expert_config={"hot_occupancy_factor": 5.0,
                                              "hot_p_value": 1e-7,
                                              "dead_prior_fraction": 0.005,
                                              "known_dead_prior": 0.9,
                                              "min_events": 20},
                               produced_payloads=["PXDMasks"])

PAYLOAD = "PXDMasks"
GOOD, HOT, DEAD = 0, 1, 2


def classify(counts: np.ndarray, n_events: int, previous_status: np.ndarray, cfg: dict) -> dict[str, np.ndarray]:
    """Status (sensors, pixels) from pixel ``counts`` over ``n_events`` events (see the module docstring)."""
    from scipy.stats import poisson

    counts = np.asarray(counts)
    occupancy = np.median(counts, axis=1) / n_events  # (sensors,) robust first estimate
    prior = np.where(previous_status == DEAD, float(cfg["known_dead_prior"]), float(cfg["dead_prior_fraction"]))
    for _ in range(2):  # second pass: the mean occupancy of the pixels classified good (unbiased)
        mu = np.broadcast_to(occupancy[:, None] * n_events, counts.shape)
        p_hot = poisson.sf(counts - 1, mu)  # P(X >= count)
        hot = (counts >= float(cfg["hot_occupancy_factor"]) * mu) & (p_hot < float(cfg["hot_p_value"])) & (counts > 0)
        dead = (counts == 0) & (prior > (1.0 - prior) * np.exp(-mu))
        good = ~hot & ~dead
        occupancy = np.sum(np.where(good, counts, 0), axis=1) / np.maximum(good.sum(axis=1), 1) / n_events
    status = np.zeros(counts.shape, np.uint8)
    status[hot] = HOT
    status[dead] = DEAD
    return {"status": status, "occupancy": occupancy}


def pixel_counts(files, sensor_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(counts (sensors, pixels) int64, number of events) from the pxd_digits of random_calib raw files."""
    from b2luca.reco.geometry import N_PXD_PIXELS
    from calibrations._common import read_tables

    # one read per file (both tables): a file's cost is per read, not per row
    data = read_tables(files, {"event": ["event"], "pxd_digits": ["sensor", "pixel"]})
    n_events = data["event"]["event"].size
    d = data["pxd_digits"]
    pos = np.searchsorted(sensor_ids, d["sensor"])
    pos_c = np.clip(pos, 0, sensor_ids.size - 1)
    if np.any(sensor_ids[pos_c] != d["sensor"]):
        raise ValueError(f"pxd_digits on unknown PXD sensor id(s) "
                         f"{np.unique(d['sensor'][sensor_ids[pos_c] != d['sensor']])[:10].tolist()}")
    pixel = np.asarray(d["pixel"], dtype=np.int64)
    if pixel.size and (pixel.min() < 0 or pixel.max() >= N_PXD_PIXELS):
        raise ValueError(f"pxd_digits pixel id outside 0..{N_PXD_PIXELS - 1}")
    counts = np.bincount(pos_c * N_PXD_PIXELS + pixel, minlength=sensor_ids.size * N_PXD_PIXELS)
    return counts.reshape(sensor_ids.size, N_PXD_PIXELS), n_events


def calibrate(job) -> None:
    """Hot/dead pixel masks from random_calib occupancy, stored as PXDMasks in job.output_db."""
    from b2luca.reco.geometry import nominal_geometry
    from calibrations._common import first_exprun, previous_payload, require_files

    cfg = {**settings.expert_config, **job.expert_config}
    files = [p for p, _ in job.input_files.get("random_calib", [])]
    require_files(files, f"{settings.name}/random_calib")
    ids = nominal_geometry().pxd_sensor_ids.astype(np.int32)
    counts, n_events = pixel_counts(files, ids)
    if n_events < int(cfg["min_events"]):
        raise RuntimeError(f"{settings.name}: only {n_events} random_calib events in {len(files)} files, "
                           f"need at least {cfg['min_events']}")
    previous = previous_payload(job.database_chain, PAYLOAD, first_exprun(job.requested_iov))
    prev_status = np.zeros(counts.shape, np.uint8)
    pos = np.searchsorted(ids, np.asarray(previous["sensor_id"]))
    known = (pos < ids.size) & (ids[np.clip(pos, 0, ids.size - 1)] == np.asarray(previous["sensor_id"]))
    prev_status[pos[known]] = np.asarray(previous["status"])[known]
    result = classify(counts, n_events, prev_status, cfg)
    status = result["status"]
    job.log.info("%s: %d events, occupancy %.4f, %d hot, %d dead pixels (previous mask: %d hot, %d dead)",
                 settings.name, n_events, float(result["occupancy"].mean()), int((status == HOT).sum()),
                 int((status == DEAD).sum()), int((prev_status == HOT).sum()), int((prev_status == DEAD).sum()))
    job.output_db.store(PAYLOAD, {"sensor_id": ids, "status": status, "n_events": np.array([n_events], np.int64),
                                  "occupancy": result["occupancy"], "counts": counts.astype(np.int32)},
                        job.output_iov)
