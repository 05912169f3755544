"""Validation of the SVD time offsets.

With the simulation truth: pulls (fitted - true) / error of every calibrated sensor; passes when the
pull mean is within 0 ± k/sqrt(N), the pull width within 1 ± k/sqrt(2N) and no |pull| exceeds the
limit that N Gaussians stay below with probability 1 - 1e-3, and at least ``min_calibrated_fraction``
of the sensors are calibrated.
Without truth: split-half self-consistency -- the offsets recomputed from the even and the odd events
of the input data must agree within their errors (same pull criteria) -- plus the calibrated fraction.
Writes svd_time_offsets.png and svd_time_offsets.csv.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="SVDTimeOffsets",
                              description=__doc__,
                              download_files=[],
                              expert_config={"pull_tolerance_sigma": 5.0,
                                             "min_calibrated_fraction": 0.9})


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate SVDTimeOffsets (see the module docstring); returns a Verdict."""
    from b2luca.contract import Verdict, read_input_data
    from calibrations._common import (calibration_output, limit_files_per_run, pull_figures, pull_histogram, pulls_ok,
                                      pyplot, read_branches, save_figure, split_half, truth_or_none, write_csv)
    from calibrations.svd_time_offsets import fit_offsets

    cfg = {**settings.expert_config, **(expert_config or {})}
    k = float(cfg.get("pull_tolerance_sigma", 5.0))
    out = calibration_output(job_path, "SVDTimeOffsets", "SVDTimeOffsets")
    err = np.asarray(out["offset_error"], dtype=float)
    calibrated = np.isfinite(err) & (err > 0)
    fraction = float(calibrated.mean())
    truth = truth_or_none(kwargs.get("reference_db"), "SVDTimeOffsets", requested_iov)
    figures: dict[str, float | str] = {"sensors": float(err.size), "calibrated_fraction": fraction,
                                       "median_error_ns": float(np.nanmedian(err)) if calibrated.any() else np.nan}
    reasons = []
    if truth is not None:
        if not np.array_equal(np.asarray(truth["sensor_id"]), np.asarray(out["sensor_id"])):
            raise ValueError("SVDTimeOffsets: sensor ids of the result and the truth differ")
        diff = np.asarray(out["offset"], dtype=float) - np.asarray(truth["offset"], dtype=float)
        pulls = np.where(calibrated, diff / np.where(calibrated, err, 1.0), np.nan)
        figures["mode"] = "truth"
        figures["rms_fitted_minus_true_ns"] = float(np.sqrt(np.mean(diff[calibrated] ** 2))) if calibrated.any() else np.nan
        reference, ref_label = np.asarray(truth["offset"], dtype=float), "true offset [ns]"
    else:
        files = limit_files_per_run(read_input_data(input_data_path).get("hadron_calib", []),
                                    cfg.get("max_files_per_run"))
        hits = read_branches(files, "svd", ["event", "sensor", "time"])
        min_hits = int(cfg.get("min_hits_per_sensor", 20))  # per half: keeps the t-tails small
        halves = [fit_offsets(hits["sensor"][m], hits["time"][m], min_hits, float(cfg.get("outlier_sigma", 5.0)),
                              {"sensor_id": out["sensor_id"], "offset": out["offset"]})
                  for m in (hits["event"] % 2 == 0, hits["event"] % 2 == 1)]
        sh = split_half(out, halves, "offset", "offset_error", calibrated, k)
        pulls = sh.pulls
        figures.update(sh.stored_figures)
        reasons += sh.reasons
        figures["mode"] = "split-half"
        reference, ref_label = sh.reference, "odd-event offset [ns]"
    pf = pull_figures(pulls, k)
    figures.update(pf)
    figures["chi2_ndf"] = float(np.nanmean(pulls ** 2)) if np.isfinite(pulls).any() else np.nan
    ok, why = pulls_ok(pf)
    reasons += why
    if fraction < float(cfg.get("min_calibrated_fraction", 0.9)):
        reasons.append(f"only {fraction:.1%} of the sensors calibrated")

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].errorbar(reference[calibrated], np.asarray(out["offset"])[calibrated], yerr=err[calibrated], fmt=".", ms=3)
    lim = [np.nanmin(reference) - 1, np.nanmax(reference) + 1]
    axes[0].plot(lim, lim, "k--", lw=0.8)
    axes[0].set_xlabel(ref_label)
    axes[0].set_ylabel("fitted offset [ns]")
    axes[0].set_title("SVD time offsets per sensor")
    pull_histogram(axes[1], pulls, f"pulls ({figures['mode']})")
    plots = [save_figure(fig, "svd_time_offsets.png"),
             write_csv("svd_time_offsets.csv", {"sensor_id": out["sensor_id"], "offset_ns": out["offset"],
                                                "error_ns": err, "n_hits": out["n_hits"],
                                                "reference_ns": reference, "pull": pulls})]
    message = "OK" if not reasons else "; ".join(reasons)
    return Verdict(passed=not reasons, figures=figures, plots=plots, message=message)
