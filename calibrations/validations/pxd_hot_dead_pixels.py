"""Validation of the PXD hot/dead pixel masks.

Always (self-consistency): the counts of the pixels classified good must be Poisson with the sensor's
occupancy: chi2/ndf of (count - mu)^2 / mu within 1 ± k sqrt(2/ndf); hot and dead fractions below
``max_hot_fraction`` / ``max_dead_fraction``.
With the simulation truth: wrongly flagged hot (dead) pixels must not exceed the upper 1 - 1e-3
Poisson quantile of their expected number (good pixels passing the hot p-value cut: N_good * p;
good pixels with zero counts: sum exp(-mu)); missed hot pixels must not exceed the quantile of the
expected misses (hot rate measured on the flagged pixels); every dead pixel for which the data alone
decide (exp(-mu) < prior/(1-prior)) must be found.
Writes pxd_hot_dead_pixels.png and pxd_hot_dead_pixels.csv.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="PXDHotDeadPixels",
                              description=__doc__,
                              download_files=[],
                              expert_config={"tolerance_sigma": 5.0, "p_false": 1e-3,
                                             "max_hot_fraction": 0.01, "max_dead_fraction": 0.05})


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate PXDMasks (see the module docstring); returns a Verdict."""
    from scipy.stats import poisson

    from b2luca.contract import Verdict
    from calibrations._common import expert_config_dict
    from calibrations._common import calibration_output, pyplot, save_figure, truth_or_none, write_csv
    from calibrations.pxd_hot_dead_pixels import DEAD, GOOD, HOT
    from calibrations.pxd_hot_dead_pixels import settings as cal_settings

    cfg = {**cal_settings.expert_config, **settings.expert_config, **expert_config_dict(expert_config)}
    p_false = float(cfg["p_false"])
    out = calibration_output(job_path, "PXDHotDeadPixels", "PXDMasks")
    status = np.asarray(out["status"])
    counts = np.asarray(out["counts"], dtype=float)
    n_events = int(np.asarray(out["n_events"])[0])
    occ = np.asarray(out["occupancy"], dtype=float)
    mu = np.broadcast_to(occ[:, None] * n_events, counts.shape)
    good = status == GOOD
    ndf = int(good.sum()) - occ.size
    chi2 = float(np.sum(np.where(good & (mu > 0), (counts - mu) ** 2 / np.where(mu > 0, mu, 1.0), 0.0)))
    figures: dict[str, float | str] = {"n_events": float(n_events), "mean_occupancy": float(occ.mean()),
                                       "hot": float((status == HOT).sum()), "dead": float((status == DEAD).sum()),
                                       "good_chi2_ndf": chi2 / max(ndf, 1),
                                       "good_chi2_ndf_tolerance": float(cfg["tolerance_sigma"]) * np.sqrt(2.0 / max(ndf, 1))}
    reasons = []
    if abs(figures["good_chi2_ndf"] - 1) > figures["good_chi2_ndf_tolerance"]:
        reasons.append(f"good-pixel counts not Poisson: chi2/ndf {figures['good_chi2_ndf']:.3f}")
    if (status == HOT).mean() > float(cfg["max_hot_fraction"]):
        reasons.append(f"hot fraction {(status == HOT).mean():.4f} above {cfg['max_hot_fraction']}")
    if (status == DEAD).mean() > float(cfg["max_dead_fraction"]):
        reasons.append(f"dead fraction {(status == DEAD).mean():.4f} above {cfg['max_dead_fraction']}")
    truth = truth_or_none(kwargs.get("reference_db"), "PXDMasks", requested_iov)
    rows = {"quantity": [], "value": [], "limit": []}
    if truth is not None:
        ts = np.asarray(truth["status"])
        figures["mode"] = "truth"
        t_good = ts == GOOD
        # hot pixels
        false_hot = int(((status == HOT) & (ts != HOT)).sum())
        lam_fh = float(t_good.sum()) * float(cfg["hot_p_value"])
        lim_fh = float(poisson.isf(p_false, lam_fh))
        fh = (status == HOT)
        rate_h = float(counts[fh].mean() / n_events) if fh.any() else 0.0
        c_star = np.maximum(np.ceil(float(cfg["hot_occupancy_factor"]) * mu),
                            poisson.isf(float(cfg["hot_p_value"]), mu) + 1)
        lam_mh = float(np.sum(np.where(ts == HOT, poisson.cdf(c_star - 1, rate_h * n_events), 0.0)))
        missed_hot = int(((status != HOT) & (ts == HOT)).sum())
        lim_mh = float(poisson.isf(p_false, lam_mh))
        # dead pixels
        false_dead = int(((status == DEAD) & (ts != DEAD)).sum())
        lam_fd = float(np.sum(np.where(t_good, np.exp(-mu), 0.0)))
        lim_fd = float(poisson.isf(p_false, lam_fd))
        prior = float(cfg["dead_prior_fraction"])
        decisive = prior > (1 - prior) * np.exp(-mu)
        missed_dead_decisive = int(((status != DEAD) & (ts == DEAD) & decisive).sum())
        n_hot, n_dead = int((ts == HOT).sum()), int((ts == DEAD).sum())
        figures.update(true_hot=float(n_hot), true_dead=float(n_dead),
                       hot_efficiency=float(((status == HOT) & (ts == HOT)).sum() / max(n_hot, 1)),
                       dead_efficiency=float(((status == DEAD) & (ts == DEAD)).sum() / max(n_dead, 1)),
                       false_hot=float(false_hot), false_hot_limit=lim_fh, missed_hot=float(missed_hot),
                       missed_hot_expected=lam_mh, missed_hot_limit=lim_mh, false_dead=float(false_dead),
                       false_dead_expected=lam_fd, false_dead_limit=lim_fd,
                       missed_dead_decisive=float(missed_dead_decisive))
        for name, value, limit in (("false_hot", false_hot, lim_fh), ("missed_hot", missed_hot, lim_mh),
                                   ("false_dead", false_dead, lim_fd), ("missed_dead_decisive", missed_dead_decisive, 0)):
            rows["quantity"].append(name)
            rows["value"].append(value)
            rows["limit"].append(limit)
            if value > limit:
                reasons.append(f"{name} = {value} above the statistical limit {limit:g}")
    else:
        figures["mode"] = "self-consistency"
    rows["quantity"] += ["good_chi2_ndf", "hot", "dead"]
    rows["value"] += [figures["good_chi2_ndf"], figures["hot"], figures["dead"]]
    rows["limit"] += [1 + figures["good_chi2_ndf_tolerance"], float(cfg["max_hot_fraction"]) * status.size,
                      float(cfg["max_dead_fraction"]) * status.size]

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    top = int(max(counts.max(), 1))
    bins = np.arange(-0.5, top + 1.5, max(1, top // 60))
    for label, mask in (("good", status == GOOD), ("hot", status == HOT), ("dead", status == DEAD)):
        if mask.any():
            axes[0].hist(counts[mask], bins=bins, histtype="step", label=f"{label} ({int(mask.sum())})")
    axes[0].set_yscale("log")
    axes[0].set_xlabel(f"pixel count in {n_events} events")
    axes[0].legend(fontsize=7)
    axes[0].set_title("PXD pixel occupancy by status")
    axes[1].bar(np.arange(occ.size), (status == HOT).sum(1), label="hot")
    axes[1].bar(np.arange(occ.size), (status == DEAD).sum(1), bottom=(status == HOT).sum(1), label="dead")
    axes[1].set_xlabel("PXD sensor index")
    axes[1].set_ylabel("masked pixels")
    axes[1].legend(fontsize=7)
    plots = [save_figure(fig, "pxd_hot_dead_pixels.png"), write_csv("pxd_hot_dead_pixels.csv", rows)]
    return Verdict(passed=not reasons, figures=figures, plots=plots, message="OK" if not reasons else "; ".join(reasons))
