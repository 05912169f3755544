"""PXD beam-background GAN: a Wasserstein GAN with gradient penalty trained on the bucket's
random-trigger PXD background (the ``pxd_bkg`` tree of random_calib raw data), so that simulation can
overlay generated background instead of storing background files (Belle II).

Published setup: 96 normal random inputs per image, 5 critic updates per generator update, Adam at 1e-4
decaying linearly to 0 (betas 0.5, 0.9), gradient-penalty weight 10, PyTorch; here ``latent`` (96) is the
size of each seed's shape latent, not of a whole image's input.  The generator is a
seed-and-stamp transposed convolution (b2luca/ml/pxd_gan.py, payload format 2): seeds fire where a normal
noise map exceeds a per-region threshold (regions: layer x v band of ``patch_v`` rows; the thresholds
are matched to the input's occupancy per region), each seed's cluster is painted from a shape latent
(``latent`` -> ``hidden`` -> 8 maps -> 7 x 7 kernel); the critic compares single clusters.  The defaults
below (``generator_iterations`` = 20000) are the real-use setting; ``patch_v`` 15 rows gives 10 v bands
per layer (20 regions), which follow the background's v profile (one band per layer misses the hit map's
allowance); the demo scales it to two CPU cores (configs/demo.yaml: 15 x 10 patches, 300 iterations at a
higher learning rate; see the README).  Events are those of the input files (at most ``max_events``, the
first ones).
The payload PXDBackgroundGAN holds the generator's state dict and its hyper-parameters as plain arrays
(no pickle; b2luca/ml/model_payload.py), plus ``input_occupancy`` (1,) and ``n_events`` (1,).
expert_config: ``device`` (auto: CUDA when present), ``threads`` (CPU threads), ``seed``, the sizes,
``generator_iterations``, ``learning_rate``, ``min_events``.  Snapshot choice (issue 15,
b2luca/ml/gan_monitor.py): every ``holdout_every``-th event is held out of the training; every
``eval_every`` generator iterations the thresholds are matched and ``eval_per_region`` patches per region
are generated from the same random numbers and compared with the held-out events (occupancy per region, cluster size); the payload is
the snapshot that reproduced them best (``eval_every`` 0: the last one, no events held out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="PXDBackgroundGAN",
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
                               expert_config={"device": "auto",
                                              "threads": 2,
                                              "seed": 16,
                                              "latent": 96,
                                              "hidden": 512,
                                              "patch_v": 15,
                                              "patch_u": 50,
                                              "critic_updates": 5,
                                              "generator_iterations": 20000,
                                              "batch_size": 64,
                                              "learning_rate": 0.0001,
                                              "beta1": 0.5,
                                              "beta2": 0.9,
                                              "gp_lambda": 10.0,
                                              "adc_scale": 30.0,
                                              "max_events": 500,
                                              "min_events": 20,
                                              "holdout_every": 5,
                                              "eval_every": 500,
                                              "eval_per_region": 500},
                               produced_payloads=["PXDBackgroundGAN"])

PAYLOAD = "PXDBackgroundGAN"


def read_background(files: Sequence[Path], max_events: int) -> tuple[dict[str, np.ndarray], int]:
    """(fired background pixels with ``event`` renumbered 0..n-1 across files, n events) from the
    ``pxd_bkg`` trees of random_calib raw files; at most ``max_events`` events (the first ones)."""
    from b2luca.rootio import read_trees

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("event", "sensor", "pixel", "adc")}
    offset = 0
    for f in files:
        if offset >= max_events:
            break
        data = read_trees(f, {"event": ["event"], "pxd_bkg": ["event", "sensor", "pixel", "adc"]})
        ev = np.asarray(data["event"]["event"], np.int64)
        bkg = data["pxd_bkg"]
        pos = np.searchsorted(ev, np.asarray(bkg["event"], np.int64))
        if pos.size and (np.any(pos >= ev.size) or np.any(ev[np.minimum(pos, ev.size - 1)] != bkg["event"])):
            raise ValueError(f"{f}: tree 'pxd_bkg' has pixels of events missing from the event tree")
        keep = pos + offset < max_events
        parts["event"].append(pos[keep] + offset)
        for k in ("sensor", "pixel", "adc"):
            parts[k].append(np.asarray(bkg[k])[keep])
        offset += min(ev.size, max_events - offset)
    return {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}, offset


def calibrate(job) -> None:
    """Train the WGAN-GP on the bucket's random-trigger PXD background and store the generator."""
    from b2luca.ml import require_torch
    from b2luca.ml.pxd_gan import train
    from b2luca.reco.geometry import nominal_geometry
    from calibrations._common import require_files

    require_torch(settings.name)  # one clear line before any data is read
    cfg = {**settings.expert_config, **job.expert_config}
    files = [p for p, _ in job.input_files.get("random_calib", [])]
    require_files(files, f"{settings.name}/random_calib")
    pixels, n_events = read_background(files, int(cfg["max_events"]))
    if n_events < int(cfg["min_events"]):
        raise RuntimeError(f"{settings.name}: only {n_events} random_calib events in {len(files)} files, "
                           f"need at least {cfg['min_events']}")
    job.log.info("%s: %d random-trigger events, %d background pixels", settings.name, n_events, pixels["event"].size)
    arrays, figures = train(pixels, n_events, nominal_geometry(), cfg, job.log)
    job.log.info("%s: %s", settings.name, ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    # deterministic figures only (no timings): a rerun stores an identical payload
    arrays["input_occupancy"] = np.array([figures["input_occupancy"]])
    arrays["n_events"] = np.array([n_events], np.int64)
    job.output_db.store(PAYLOAD, arrays, job.output_iov)
