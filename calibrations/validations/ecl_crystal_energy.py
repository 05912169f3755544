"""Validation of the ECL crystal energy constants.

With the simulation truth: pulls (fitted - true) / error of the crystals with at least
``min_entries_per_crystal`` entries (data-constrained) and of all crystals (posterior including the
prior); pull mean within 0 ± k/sqrt(N), width within 1 ± k/sqrt(2N), max |pull| below the limit N
Gaussians stay below with probability 1 - 1e-3.
Always (self-consistency with the input cDSTs): the ratio E_cluster / E_expected of the Bhabha
clusters recomputed with the new constants must be centred on 1 within k standard errors of its
mean, and its spread must not be larger than with the constants the cDSTs were made with.
Writes ecl_crystal_energy.png and ecl_crystal_energy.csv.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="ECLCrystalEnergy",
                              description=__doc__,
                              download_files=[],
                              expert_config={"pull_tolerance_sigma": 5.0})


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate ECLCrystalEnergy (see the module docstring); returns a Verdict."""
    from b2luca.contract import Verdict, read_input_data
    from calibrations._common import calibration_output, pull_figures, pull_histogram, pulls_ok, pyplot, \
        save_figure, truth_or_none, write_csv
    from calibrations.ecl_crystal_energy import build_system, read_bhabha
    from calibrations.ecl_crystal_energy import settings as cal_settings

    cfg = {**cal_settings.expert_config, **settings.expert_config, **(expert_config or {})}
    k = float(cfg["pull_tolerance_sigma"])
    out = calibration_output(job_path, "ECLCrystalEnergy", "ECLCrystalEnergy")
    c = np.asarray(out["constant"], float)
    err = np.asarray(out["constant_error"], float)
    informed = np.asarray(out["n_entries"]) >= int(cfg["min_entries_per_crystal"])
    figures: dict[str, float | str] = {"crystals": float(c.size), "informed_crystals": float(informed.sum()),
                                       "median_error_informed": float(np.median(err[informed])) if informed.any() else np.nan,
                                       "median_error_all": float(np.median(err))}
    reasons = []
    truth = truth_or_none(kwargs.get("reference_db"), "ECLCrystalEnergy", requested_iov)
    pulls = np.full(c.size, np.nan)
    if truth is not None:
        t = np.asarray(truth["constant"], float)
        pulls = (c - t) / err
        for label, sel in (("informed", informed), ("all", np.ones(c.size, bool))):
            pf = pull_figures(pulls[sel], k)
            figures.update({f"{label}_{key}": value for key, value in pf.items()})
            reasons += [f"{label} crystals: {r}" for r in pulls_ok(pf)[1]]
        figures["rms_fitted_minus_true_informed"] = float(np.sqrt(np.mean((c - t)[informed] ** 2)))
        figures["mode"] = "truth"
    else:
        figures["mode"] = "self-consistency"
    # E / E_expected with the new constants and with the cDST's own
    files = [p for p, _ in read_input_data(input_data_path).get("bhabha_all_calib", [])]
    ecl, tracks = read_bhabha(files)
    cl, crystal, amp, e_exp, _n = build_system(ecl, tracks, cfg)
    e_new = np.bincount(cl, c[crystal] * amp, minlength=e_exp.size)
    used = np.zeros(c.size)
    m = np.asarray(ecl["cand"]) >= 0
    used[np.asarray(ecl["crystal"])[m]] = 1
    # energy the cDST carries (constants in force at production time)
    old_const = np.ones(c.size)
    if "energy" in ecl:
        a = np.asarray(ecl["amplitude"], float)[m]
        nz = np.abs(a) > 0
        old_const[np.asarray(ecl["crystal"])[m][nz]] = np.asarray(ecl["energy"], float)[m][nz] / a[nz]
    e_old = np.bincount(cl, old_const[crystal] * amp, minlength=e_exp.size)
    r_new, r_old = e_new / e_exp, e_old / e_exp
    mean, sem = float(np.mean(r_new)), float(np.std(r_new) / np.sqrt(r_new.size))
    figures.update(ratio_mean=mean, ratio_mean_error=sem, ratio_rms_new=float(np.std(r_new)),
                   ratio_rms_before=float(np.std(r_old)), clusters=float(r_new.size))
    if abs(mean - 1) > k * sem + 1e-4:
        reasons.append(f"E/E_expected mean {mean:.5f} not 1 within {k} x {sem:.5f}")
    if np.std(r_new) > np.std(r_old) * (1 + k / np.sqrt(2 * r_new.size)):
        reasons.append(f"E/E_expected spread grew: {np.std(r_new):.5f} (before {np.std(r_old):.5f})")

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(0.85, 1.15, 61)
    axes[0].hist(np.clip(r_old, 0.85, 1.15), bins=bins, histtype="step", label=f"before (rms {np.std(r_old):.4f})")
    axes[0].hist(np.clip(r_new, 0.85, 1.15), bins=bins, histtype="step", label=f"after (rms {np.std(r_new):.4f})")
    axes[0].set_xlabel("E_cluster / E_expected")
    axes[0].legend(fontsize=7)
    axes[0].set_title("ECL Bhabha clusters")
    if truth is not None:
        pull_histogram(axes[1], pulls[informed], "pulls of the data-constrained crystals")
    else:
        axes[1].hist(c, bins=60, histtype="step")
        axes[1].set_xlabel("constant")
    plots = [save_figure(fig, "ecl_crystal_energy.png"),
             write_csv("ecl_crystal_energy.csv", {"crystal": out["crystal"], "constant": c, "error": err,
                                                  "n_entries": out["n_entries"], "pull": pulls})]
    return Verdict(passed=not reasons, figures=figures, plots=plots, message="OK" if not reasons else "; ".join(reasons))
