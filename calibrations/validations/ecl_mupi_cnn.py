"""Validation of the ECL mu/pi CNN against truth labels on the test split (20 % of the events, never
seen in training or epoch choice).

The toy samples are pure (radmumu_calib tracks are muons, hadron_calib tracks pions), so the sample is
the truth label.  For each crystal threshold 1, 2, 5 MeV and in the region p < ``p_low`` (0.6 GeV/c,
where the KLM is out of reach): the cut giving ``muon_efficiency`` (90 %) on the test muons, the pion
fake rate at that cut with its binomial error, for the CNN and for the E/p baseline (3x3 crystals
around the entry / p, muon-like when small).  Fails unless, at every threshold,
(a) the CNN fake rate is lower than the E/p one by ``min_improvement_sigma`` combined standard errors,
(b) the CNN fake rates at the three thresholds agree: chi2 against their mean with p-value above
``stability_p_value`` (errors treated as independent: conservative, the samples are shared),
(c) the CNN's ROC area exceeds the E/p one, and (d) there are ``min_test_tracks`` test muons and pions.
Also written: fake rates in bins of p (ecl_mupi_cnn_pbins.csv), ROC curves and the fake-rate-vs-p plot
(ecl_mupi_cnn.png).
"""

from __future__ import annotations

import numpy as np
from scipy.special import chdtrc  # scipy.special, not scipy.stats: ~1 s less per job

from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="ECLMuPiCNN",
                              description=__doc__,
                              download_files=[],
                              expert_config={"muon_efficiency": 0.9, "p_low": 0.6,
                                             "min_improvement_sigma": 2.0, "stability_p_value": 1e-3,
                                             "min_test_tracks": 100,
                                             "p_bins": [0.3, 0.45, 0.6, 0.8, 1.0, 1.5, 3.0]})


def fake_rate_at(mu_score: np.ndarray, pi_score: np.ndarray, efficiency: float) -> tuple[float, float, float]:
    """(fake rate, binomial error, cut): the cut keeps ``efficiency`` of the muons (score >= cut)."""
    if mu_score.size == 0 or pi_score.size == 0:
        return float("nan"), float("nan"), float("nan")
    cut = float(np.quantile(mu_score, 1 - efficiency))
    f = float(np.mean(pi_score >= cut))
    return f, float(np.sqrt(max(f * (1 - f), 1.0 / pi_score.size) / pi_score.size)), cut


def roc(mu_score: np.ndarray, pi_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(muon efficiency, pion fake rate, area under the curve) scanning the cut."""
    cuts = np.unique(np.concatenate([mu_score, pi_score]))[::-1]
    eff = np.searchsorted(np.sort(-mu_score), -cuts, side="right") / max(mu_score.size, 1)
    fake = np.searchsorted(np.sort(-pi_score), -cuts, side="right") / max(pi_score.size, 1)
    eff, fake = np.concatenate([[0.0], eff, [1.0]]), np.concatenate([[0.0], fake, [1.0]])
    return eff, fake, float(np.sum(np.diff(fake) * 0.5 * (eff[1:] + eff[:-1])))


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate ECLMuPiCNN (see the module docstring); returns a Verdict."""
    from b2luca.contract import Verdict, read_input_data
    from b2luca.ml.ecl_cnn import muon_probability
    from b2luca.ml.ecl_images import TEST, THRESHOLDS_GEV, e_over_p, threshold
    from calibrations._common import calibration_output, expert_config_dict, pyplot, save_figure, write_csv
    from calibrations.ecl_mupi_cnn import samples
    from calibrations.ecl_mupi_cnn import settings as cal_settings

    cfg = {**cal_settings.expert_config, **settings.expert_config, **expert_config_dict(expert_config)}
    eff_wp, p_low = float(cfg["muon_efficiency"]), float(cfg["p_low"])
    arrays = calibration_output(job_path, "ECLMuPiCNN", "ECLMuPiCNN")
    mu, pi = samples(read_input_data(input_data_path), np.asarray(arrays["ecl_constant"], float), cfg)
    mu, pi = mu.select(mu.split == TEST), pi.select(pi.split == TEST)
    lo_mu, lo_pi = mu.p < p_low, pi.p < p_low
    figures: dict[str, float | str] = {"test_muons": float(len(mu)), "test_pions": float(len(pi)),
                                       "test_muons_low_p": float(lo_mu.sum()), "test_pions_low_p": float(lo_pi.sum()),
                                       "muon_efficiency": eff_wp}
    reasons = []
    if min(lo_mu.sum(), lo_pi.sum()) < int(cfg["min_test_tracks"]):
        reasons.append(f"too few test tracks below {p_low} GeV/c: {int(lo_mu.sum())} muons, {int(lo_pi.sum())} pions "
                       f"(need {cfg['min_test_tracks']})")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cnn_rates, cnn_errors = [], []
    bins = np.asarray(cfg["p_bins"], float)
    pbin_rows: dict[str, list] = {"threshold_mev": [], "p_low": [], "p_high": [], "n_mu": [], "n_pi": [],
                                  "fake_cnn": [], "fake_cnn_error": [], "fake_ep": [], "fake_ep_error": []}
    for thr in THRESHOLDS_GEV:
        tag = f"{thr * 1000:.0f}MeV"
        s_mu = muon_probability(arrays, mu, threshold(mu.image, thr))
        s_pi = muon_probability(arrays, pi, threshold(pi.image, thr))
        ep_mu = -e_over_p(threshold(mu.image, thr), mu.p)  # small E/p = muon-like
        ep_pi = -e_over_p(threshold(pi.image, thr), pi.p)
        f_cnn, e_cnn, _ = fake_rate_at(s_mu[lo_mu], s_pi[lo_pi], eff_wp)
        f_ep, e_ep, _ = fake_rate_at(ep_mu[lo_mu], ep_pi[lo_pi], eff_wp)
        ex, fx, auc_cnn = roc(s_mu[lo_mu], s_pi[lo_pi])
        ex_ep, fx_ep, auc_ep = roc(ep_mu[lo_mu], ep_pi[lo_pi])
        figures.update({f"fake_rate_cnn_{tag}": f_cnn, f"fake_rate_cnn_error_{tag}": e_cnn,
                        f"fake_rate_ep_{tag}": f_ep, f"fake_rate_ep_error_{tag}": e_ep,
                        f"auc_cnn_{tag}": auc_cnn, f"auc_ep_{tag}": auc_ep})
        cnn_rates.append(f_cnn)
        cnn_errors.append(e_cnn)
        k = float(cfg["min_improvement_sigma"])
        if not f_ep - f_cnn > k * np.hypot(e_cnn, e_ep):
            reasons.append(f"{tag}: CNN pion fake rate {f_cnn:.3f}±{e_cnn:.3f} not below E/p {f_ep:.3f}±{e_ep:.3f} "
                           f"by {k} sigma at {eff_wp:.0%} muon efficiency, p < {p_low}")
        if not auc_cnn > auc_ep:
            reasons.append(f"{tag}: CNN ROC area {auc_cnn:.3f} not above E/p {auc_ep:.3f}")
        axes[0].plot(fx, ex, label=f"CNN {tag} (AUC {auc_cnn:.3f})")
        axes[0].plot(fx_ep, ex_ep, ":", label=f"E/p {tag} (AUC {auc_ep:.3f})")
        for lo, hi in zip(bins[:-1], bins[1:]):
            bm, bp = (mu.p >= lo) & (mu.p < hi), (pi.p >= lo) & (pi.p < hi)
            fc, ec, _ = fake_rate_at(s_mu[bm], s_pi[bp], eff_wp)
            fe, ee, _ = fake_rate_at(ep_mu[bm], ep_pi[bp], eff_wp)
            for key, val in zip(pbin_rows, (thr * 1000, lo, hi, int(bm.sum()), int(bp.sum()), fc, ec, fe, ee)):
                pbin_rows[key].append(val)
    rates, errs = np.asarray(cnn_rates), np.asarray(cnn_errors)
    if np.all(np.isfinite(rates)) and np.all(errs > 0):
        w = 1 / errs ** 2
        mean = float(np.sum(w * rates) / np.sum(w))
        chi2 = float(np.sum(w * (rates - mean) ** 2))
        p_value = float(chdtrc(rates.size - 1, chi2))  # P(chi2 > chi2) for rates.size - 1 dof
        figures.update(threshold_stability_chi2=chi2, threshold_stability_p_value=p_value)
        if p_value < float(cfg["stability_p_value"]):
            reasons.append(f"CNN fake rate not stable across thresholds 1/2/5 MeV: {np.round(rates, 3).tolist()} "
                           f"(chi2 {chi2:.1f}, p {p_value:.2g})")
    else:
        reasons.append("CNN fake rates at the thresholds could not be computed")
    axes[0].set_xlabel(f"pion fake rate (p < {p_low} GeV/c)")
    axes[0].set_ylabel("muon efficiency")
    axes[0].axhline(eff_wp, color="grey", lw=0.5)
    axes[0].legend(fontsize=6)
    axes[0].set_title("ROC, test sample")
    rows = np.asarray(pbin_rows["threshold_mev"]) == 2.0
    centres = 0.5 * (np.asarray(pbin_rows["p_low"]) + np.asarray(pbin_rows["p_high"]))[rows]
    axes[1].errorbar(centres, np.asarray(pbin_rows["fake_cnn"])[rows], np.asarray(pbin_rows["fake_cnn_error"])[rows],
                     fmt="o", label="CNN")
    axes[1].errorbar(centres, np.asarray(pbin_rows["fake_ep"])[rows], np.asarray(pbin_rows["fake_ep_error"])[rows],
                     fmt="s", label="E/p")
    axes[1].axvline(p_low, color="grey", lw=0.5)
    axes[1].set_xlabel("p [GeV/c]")
    axes[1].set_ylabel(f"pion fake rate at {eff_wp:.0%} muon efficiency (2 MeV)")
    axes[1].legend(fontsize=7)
    plots = [save_figure(fig, "ecl_mupi_cnn.png"), write_csv("ecl_mupi_cnn_pbins.csv", pbin_rows)]
    return Verdict(passed=not reasons, figures=figures, plots=plots, message="OK" if not reasons else "; ".join(reasons))
