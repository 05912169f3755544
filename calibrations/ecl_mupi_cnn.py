"""ECL muon/pion separation with a CNN (Belle II low-momentum muon ID), one model per charge.

The image is the 7x7 window of calibrated crystal energies (ECLCrystalEnergy constants in force x the
``ecl_full`` amplitudes of the cDST) around the crystal where the fitted track enters the ECL barrel.
Muons leave a narrow ionisation track, pions shower hadronically and spread (sometimes MIP-like).
Samples, selected without truth as on data: muons from radiative di-muon events (radmumu_calib:
exactly two well-fitted tracks of opposite charge), pions from hadron_calib tracks (on data: K_S ->
pi+ pi- daughters; the toy's hadronic events contain pions only).  Training: conv 3x3 (64 maps) ->
dense 128 with dropout 0.1, pT and the theta ring (categorical) as extra inputs, Adam 1e-3,
cross-entropy, batch 512, best epoch by validation loss, thresholds 1/2/5 MeV drawn per image and
epoch (robustness against beam background).  Events are split by a hash of (exp, run, event):
60 % training, 20 % validation (epoch choice), 20 % test (the validation script).
The payload ECLMuPiCNN holds both state dicts and the hyper-parameters as plain arrays (no pickle),
plus the crystal constants the images were made with (``ecl_constant``), ``best_epoch`` and
``validation_loss`` per charge (pos, neg).
expert_config: ``device`` (auto: CUDA when present), ``threads`` (CPU threads), ``epochs``, ``seed``.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS
from calibrations.ecl_crystal_energy import settings as ecl_crystal_energy

_GOOD_PHYSICS = [INPUT_DATA_FILTERS["Run Type"]["physics"], INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                 INPUT_DATA_FILTERS["Magnet"]["On"]]

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="ECLMuPiCNN",
                               expert_username="ecl_expert",
                               subsystem="ecl",
                               description=__doc__,
                               input_data_formats=["cdst"],
                               input_data_names=["radmumu_calib", "hadron_calib"],
                               input_data_filters={"radmumu_calib": [INPUT_DATA_FILTERS["Data Tag"]["radmumu_calib"]]
                                                   + _GOOD_PHYSICS,
                                                   "hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]]
                                                   + _GOOD_PHYSICS},
                               depends_on=[ecl_crystal_energy],
                               expert_config={"device": "auto",
                                              "threads": 2,
                                              "seed": 16,
                                              "epochs": 30,
                                              "batch_size": 512,
                                              "learning_rate": 0.001,
                                              "n_maps": 64,
                                              "hidden": 128,
                                              "dropout": 0.1,
                                              "energy_scale": 0.1,
                                              "max_chi2_ndf": 5.0,
                                              "min_candidates": 500},
                               produced_payloads=["ECLMuPiCNN"])

PAYLOAD = "ECLMuPiCNN"


def crystal_constants(chain, exprun) -> np.ndarray:
    """(6624,) ECL crystal constants in force (nominal 1 where the chain has none)."""
    from b2luca.reco.geometry import N_ECL_CRYSTALS
    from calibrations._common import previous_payload

    payload = previous_payload(chain, "ECLCrystalEnergy", exprun)
    constants = np.ones(N_ECL_CRYSTALS)
    constants[np.asarray(payload["crystal"], np.int64)] = np.asarray(payload["constant"], float)
    return constants


def samples(input_files: dict, constants: np.ndarray, cfg: dict):
    """(muon candidates, pion candidates) as TrackImages from the cDST entries of both input names."""
    from b2luca.ml.ecl_images import read_track_images, select_dimuons

    mu = select_dimuons(read_track_images(input_files["radmumu_calib"], constants, float(cfg["max_chi2_ndf"])))
    pi = read_track_images(input_files["hadron_calib"], constants, float(cfg["max_chi2_ndf"]))
    return mu, pi


def calibrate(job) -> None:
    """Train both charge models on the bucket's samples and store the ECLMuPiCNN payload."""
    from b2luca.ml import require_torch
    from b2luca.ml.ecl_cnn import train
    from calibrations._common import first_exprun, require_files

    require_torch(settings.name)  # one clear line before any data is read
    cfg = {**settings.expert_config, **job.expert_config}
    for name in settings.input_data_names:
        require_files(job.files(name), f"{settings.name}/{name}")
    constants = crystal_constants(job.database_chain, first_exprun(job.requested_iov))
    mu, pi = samples(job.input_files, constants, cfg)
    if min(len(mu), len(pi)) < int(cfg["min_candidates"]):
        raise RuntimeError(f"{settings.name}: {len(mu)} muon and {len(pi)} pion candidates reach the ECL, "
                           f"need {cfg['min_candidates']} of each")
    job.log.info("%s: %d muon candidates (radmumu_calib), %d pion candidates (hadron_calib)", settings.name,
                 len(mu), len(pi))
    arrays, figures = train(mu, pi, cfg, job.log)
    job.log.info("%s: %s", settings.name, ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    arrays["ecl_constant"] = constants.astype(np.float64)
    # deterministic training figures only (no timings): a rerun stores an identical payload
    arrays["best_epoch"] = np.array([figures["pos_best_epoch"], figures["neg_best_epoch"]], np.int32)
    arrays["validation_loss"] = np.array([figures["pos_val_loss"], figures["neg_val_loss"]])
    job.output_db.store(PAYLOAD, arrays, job.output_iov)
