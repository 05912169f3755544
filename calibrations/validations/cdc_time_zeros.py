"""Validation of the CDC board T0s.

With the simulation truth: pulls (fitted - true) / error of every calibrated board; passes when the
pull mean is within 0 ± k/sqrt(N), the width within 1 ± k/sqrt(2N), no |pull| above the limit N
Gaussians stay below with probability 1 - 1e-3, and at least ``min_calibrated_fraction`` of the
boards are calibrated.  Without truth: split-half self-consistency (even/odd events fitted
separately, same pull criteria on the differences) plus the calibrated fraction and the fitted
resolution within ``sigma_range_mm``.  Writes cdc_time_zeros.png and cdc_time_zeros.csv.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="CDCTimeZeros",
                              description=__doc__,
                              download_files=[],
                              expert_config={"pull_tolerance_sigma": 5.0,
                                             "min_calibrated_fraction": 0.9,
                                             "sigma_range_mm": [0.05, 0.3]})


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate CDCTimeZeros (see the module docstring); returns a Verdict."""
    from b2luca.contract import Verdict, read_input_data
    from calibrations._common import expert_config_dict
    from calibrations._common import (calibration_output, limit_files_per_run, pull_figures, pull_histogram, pulls_ok,
                                      pyplot, read_branches, save_figure, split_half, truth_or_none, write_csv)
    from calibrations.cdc_time_zeros import fit_t0
    from calibrations.cdc_time_zeros import settings as cal_settings

    cfg = {**cal_settings.expert_config, **settings.expert_config, **expert_config_dict(expert_config)}
    k = float(cfg["pull_tolerance_sigma"])
    out = calibration_output(job_path, "CDCTimeZeros", "CDCTimeZeros")
    err = np.asarray(out["t0_error"], float)
    calibrated = np.isfinite(err) & (err > 0)
    sigma = float(np.asarray(out["sigma_mm"])[0])
    figures: dict[str, float | str] = {"boards": float(err.size), "calibrated_fraction": float(calibrated.mean()),
                                       "median_error_ns": float(np.nanmedian(err)) if calibrated.any() else np.nan,
                                       "fitted_resolution_mm": sigma}
    reasons = []
    truth = truth_or_none(kwargs.get("reference_db"), "CDCTimeZeros", requested_iov)
    if truth is not None:
        diff = np.asarray(out["t0"], float) - np.asarray(truth["t0"], float)
        pulls = np.where(calibrated, diff / np.where(calibrated, err, 1.0), np.nan)
        figures["mode"] = "truth"
        figures["rms_fitted_minus_true_ns"] = float(np.sqrt(np.mean(diff[calibrated] ** 2)))
        reference, label = np.asarray(truth["t0"], float), "true t0 [ns]"
    else:
        entries = read_input_data(input_data_path)
        files = []
        for name in sorted(cal_settings.input_data_names):
            files += limit_files_per_run(entries.get(name, []), cfg.get("max_files_per_run"))
        hits = read_branches(files, "cdc", ["event", "board", "layer", "tdc"])
        halves = []
        for parity in (0, 1):
            m = hits["event"] % 2 == parity
            halves.append(fit_t0(hits["board"][m], hits["layer"][m], hits["tdc"][m], np.asarray(out["t0"], float),
                                 int(cfg["min_hits_per_board"]) // 2, int(cfg["max_iterations"]), sigma,
                                 start=np.asarray(out["t0"], float)))
        sh = split_half(out, halves, "t0", "t0_error", calibrated, k)
        pulls = sh.pulls
        figures.update(sh.stored_figures)
        reasons += sh.reasons
        figures["mode"] = "split-half"
        reference, label = sh.reference, "odd-event t0 [ns]"
        lo, hi = cfg["sigma_range_mm"]
        if not lo <= sigma <= hi:
            reasons.append(f"fitted resolution {sigma:.3f} mm outside [{lo}, {hi}]")
    pf = pull_figures(pulls, k)
    figures.update(pf)
    figures["chi2_ndf"] = float(np.nanmean(pulls ** 2)) if np.isfinite(pulls).any() else np.nan
    reasons += pulls_ok(pf)[1]
    if figures["calibrated_fraction"] < float(cfg["min_calibrated_fraction"]):
        reasons.append(f"only {figures['calibrated_fraction']:.1%} of the boards calibrated")

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    t0 = np.asarray(out["t0"], float)
    axes[0].errorbar(np.arange(t0.size)[calibrated], (t0 - reference)[calibrated], yerr=err[calibrated], fmt=".", ms=3)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_xlabel("board")
    axes[0].set_ylabel(f"fitted t0 - {label.split(' [')[0]} [ns]")
    axes[0].set_title("CDC board T0")
    pull_histogram(axes[1], pulls, f"pulls ({figures['mode']})")
    plots = [save_figure(fig, "cdc_time_zeros.png"),
             write_csv("cdc_time_zeros.csv", {"board": out["board"], "t0_ns": t0, "error_ns": err,
                                              "n_hits": out["n_hits"], "reference_ns": reference, "pull": pulls})]
    return Verdict(passed=not reasons, figures=figures, plots=plots, message="OK" if not reasons else "; ".join(reasons))
