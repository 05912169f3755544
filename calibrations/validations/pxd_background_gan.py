"""Validation of the PXD beam-background GAN: (a) its images against the input background, (b) what it
does to tracking.

(a) The input random_calib background (at most ``max_events`` events) is compared with a generated sample
whose size follows from the required precision (:func:`generated_events`: the fewest events for which
the statistical part of every limit below is at most ``statistical_fraction`` of its model allowance,
never more than the input's events); compared: the occupancy per sensor and event (two-sample KS test),
the cluster-size distribution (8-connected clusters, sizes 1..9 and >= 10: chi2 test of homogeneity)
and the hit map (fired pixels per PXD layer x v band of 10 rows, normalised: chi2 test).  The p-values
are reported; the demo-sized GAN is not perfect at the statistical precision of the input, so each pass
criterion is a relative difference (GAN / input - 1) below a model allowance plus its statistical error
from the sample sizes: ``occupancy_tolerance`` + k sigma for the mean occupancy (sigma from the spread of
the per-event occupancies of both samples), ``cluster_size_tolerance`` + k sigma for the mean cluster size
(from the cluster-size spread and the numbers of clusters), and, in every hit-map bin,
``hitmap_tolerance`` + k sigma for its share of the fired pixels (sigma: ratio estimator over the events,
the independent units, of each sample).  k is the Gaussian limit for ``p_false`` (the hit map's bins
counted as separate tests): a small sample (few events) widens the tolerance by its own statistical error
only, so a generator that is wrong by more than the allowance still fails.
(b) ``track_events`` simulated hadron events are reconstructed with background from the toy full
simulation, from the GAN and without background (b2luca/sim/pxd_pulls.py: background pixels near a
track's PXD cluster are merged into it); the widths of the d0 and z0 pulls in pT < 0.2 GeV and
0.2-1 GeV must agree between GAN and simulated background within ``agree_sigma`` combined standard
errors, and "no background" must differ from the simulated one by more than ``differ_sigma`` in each
pT bin (d0 or z0): the check is sensitive to the background.  Plots: pxd_background_gan.png; table:
pxd_background_gan_pulls.csv.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="PXDBackgroundGAN",
                              description=__doc__,
                              download_files=[],
                              expert_config={"max_events": 300, "occupancy_tolerance": 0.25,
                                             "cluster_size_tolerance": 0.3, "hitmap_tolerance": 0.3, "p_false": 1e-3,
                                             "statistical_fraction": 0.33, "min_generated_events": 20,
                                             "track_events": 800, "agree_sigma": 3.0, "differ_sigma": 3.0,
                                             "validation_seed": 1616})

MAX_SIZE = 10
V_BAND = 10  # rows per hit-map bin


def image_statistics(pixels: dict, n_events: int, geom) -> dict[str, np.ndarray]:
    """{"occupancy" (events x sensors,), "cluster_sizes" (sizes 1..MAX_SIZE, the last >= MAX_SIZE),
    "hitmap" (layers x v bands) fired-pixel counts, "hitmap_events" (events, layers x v bands): the same per
    event} of background pixels."""
    from b2luca.reco.geometry import PXD_NU, PXD_NV
    from b2luca.reco.pxd_clusters import clusters

    pxd = np.flatnonzero(geom.is_pxd)
    sidx = geom.sensor_index(np.asarray(pixels["sensor"]))
    pos = np.searchsorted(pxd, sidx)
    ev = np.asarray(pixels["event"], np.int64)
    occ = np.bincount(ev * pxd.size + pos, minlength=n_events * pxd.size) / (PXD_NU * PXD_NV)
    if ev.size:
        label = clusters(np.asarray(pixels["sensor"]), np.asarray(pixels["pixel"]), ev)
        sizes = np.bincount(np.unique(label, return_inverse=True)[1])
    else:
        sizes = np.zeros(0, np.int64)
    size_hist = np.bincount(np.minimum(sizes, MAX_SIZE), minlength=MAX_SIZE + 1)[1:]
    band = (np.asarray(pixels["pixel"], np.int64) // PXD_NU) // V_BAND
    layer = geom.layer[sidx] - 1
    n_bins = 2 * (PXD_NV // V_BAND)
    per_event = np.bincount(ev * n_bins + layer * (PXD_NV // V_BAND) + band, minlength=n_events * n_bins)
    per_event = per_event.reshape(n_events, n_bins)
    return {"occupancy": occ, "cluster_sizes": size_hist, "hitmap": per_event.sum(axis=0).reshape(2, -1),
            "hitmap_events": per_event}


def relative_error_of_mean(values: np.ndarray) -> float:
    """Relative statistical error of the mean of independent ``values`` (inf for fewer than 2 or a zero mean)."""
    v = np.asarray(values, float)
    if v.size < 2 or v.mean() == 0:
        return float("inf")
    return float(v.std(ddof=1) / np.sqrt(v.size) / abs(v.mean()))


def share_relative_errors(per_event: np.ndarray) -> np.ndarray:
    """Relative statistical errors of the bins' shares ``sum_e h_eb / sum_e H_e`` of (events, bins) counts: the
    ratio estimator's variance over the events (``sum_e (h_eb - s_b H_e)^2 / H^2``), the events being the
    independent units (the pixels of a cluster or an event are not); inf for an empty bin."""
    h = np.asarray(per_event, float)
    total = h.sum()
    if h.shape[0] < 2 or total == 0:
        return np.full(h.shape[1], np.inf)
    share = h.sum(axis=0) / total
    var = ((h - share[None, :] * h.sum(axis=1, keepdims=True)) ** 2).sum(axis=0) / total ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(share > 0, np.sqrt(var) / share, np.inf)


def statistical_errors(st: dict) -> tuple[float, float, np.ndarray]:
    """Relative statistical errors of one sample's image figures (:func:`image_statistics`): (mean occupancy
    (events the units), mean cluster size, each hit-map bin's share (inf where empty))."""
    n_ev = st["hitmap_events"].shape[0]
    occ = relative_error_of_mean(st["occupancy"].reshape(n_ev, -1).mean(axis=1)) if n_ev else float("inf")
    size = relative_error_of_mean(np.repeat(np.arange(1, MAX_SIZE + 1), st["cluster_sizes"]))
    return occ, size, share_relative_errors(st["hitmap_events"])


def generated_events(ref: dict, cfg: dict) -> int:
    """Events to generate for part (a): the fewest for which every limit's statistical part, k x the
    combined error of input and GAN, is at most ``statistical_fraction`` x its model allowance, the GAN's
    errors predicted from the input's per-event spread (error ~ 1 / sqrt(events); the limits themselves use
    the errors measured on both samples).  Between ``min_generated_events`` and the input's events: where
    the input alone exceeds the fraction, more generated events would gain at most sqrt(2)."""
    from calibrations._common import max_abs_pull_limit

    n_ref = int(ref["hitmap_events"].shape[0])
    p_false = float(cfg.get("p_false", 1e-3))
    occ, size, bins = statistical_errors(ref)
    k1, kb = max_abs_pull_limit(1, p_false), max_abs_pull_limit(bins.size, p_false)
    need = [(occ, k1, float(cfg["occupancy_tolerance"])), (size, k1, float(cfg["cluster_size_tolerance"]))]
    need += [(float(e), kb, float(cfg["hitmap_tolerance"])) for e in bins[np.isfinite(bins)]]
    frac = float(cfg.get("statistical_fraction", 0.33))
    n = 1.0
    for sigma_ref, k, tol in need:
        room = (frac * tol / k) ** 2 - sigma_ref ** 2  # what the GAN's error squared may use
        if not np.isfinite(sigma_ref) or room <= 0:
            return n_ref
        n = max(n, n_ref * sigma_ref ** 2 / room)
    return int(min(n_ref, max(int(np.ceil(n)), int(cfg.get("min_generated_events", 20)))))


def compare_images(ref: dict, gen: dict, cfg: dict) -> tuple[dict[str, float], list[str]]:
    """Figures and failure reasons of part (a) (tolerances: model allowance + k statistical errors, see the
    module docstring)."""
    from scipy.stats import chi2_contingency, ks_2samp

    from calibrations._common import max_abs_pull_limit

    fig: dict[str, float] = {}
    reasons = []
    p_false = float(cfg.get("p_false", 1e-3))
    k1 = max_abs_pull_limit(1, p_false)
    o_ref, o_gen = float(ref["occupancy"].mean()), float(gen["occupancy"].mean())
    fig.update(occupancy_input=o_ref, occupancy_gan=o_gen,
               occupancy_ks_p_value=float(ks_2samp(ref["occupancy"], gen["occupancy"]).pvalue))
    n_ev_ref, n_ev_gen = ref["hitmap_events"].shape[0], gen["hitmap_events"].shape[0]
    sigma = float(np.hypot(relative_error_of_mean(ref["occupancy"].reshape(n_ev_ref, -1).mean(axis=1)),
                           relative_error_of_mean(gen["occupancy"].reshape(n_ev_gen, -1).mean(axis=1))))
    tol = float(cfg["occupancy_tolerance"]) + k1 * sigma
    fig.update(occupancy_relative_error=sigma, occupancy_limit=tol)
    if not (o_ref > 0 and abs(o_gen / o_ref - 1) < tol):
        reasons.append(f"occupancy {o_gen:.4f} (GAN) vs {o_ref:.4f} (input) differs by more than {tol:.0%} "
                       f"({cfg['occupancy_tolerance']:.0%} + {k1:.1f} x {sigma:.1%} statistical)")
    sizes = np.arange(1, MAX_SIZE + 1)
    n_ref, n_gen = ref["cluster_sizes"], gen["cluster_sizes"]
    m_ref = float(np.sum(sizes * n_ref) / max(n_ref.sum(), 1))
    m_gen = float(np.sum(sizes * n_gen) / max(n_gen.sum(), 1))
    fig.update(mean_cluster_size_input=m_ref, mean_cluster_size_gan=m_gen, clusters_gan=float(n_gen.sum()))
    sigma = float(np.hypot(*(relative_error_of_mean(np.repeat(sizes, n)) for n in (n_ref, n_gen))))
    tol = float(cfg["cluster_size_tolerance"]) + k1 * sigma
    fig.update(mean_cluster_size_relative_error=sigma, mean_cluster_size_limit=tol)
    table = np.stack([n_ref, n_gen])
    table = table[:, table.sum(axis=0) > 0]
    if n_gen.sum() > 0 and table.shape[1] > 1:
        fig["cluster_size_chi2_p_value"] = float(chi2_contingency(table)[1])
    if not (n_gen.sum() > 0 and abs(m_gen / m_ref - 1) < tol):
        reasons.append(f"mean cluster size {m_gen:.2f} (GAN) vs {m_ref:.2f} (input) differs by more than {tol:.0%} "
                       f"({cfg['cluster_size_tolerance']:.0%} + {k1:.1f} x {sigma:.1%} statistical)")
    h_ref, h_gen = ref["hitmap"].reshape(-1).astype(float), gen["hitmap"].reshape(-1).astype(float)
    if h_gen.sum() > 0 and h_ref.sum() > 0:
        fig["hitmap_chi2_p_value"] = float(chi2_contingency(np.stack([h_ref, h_gen]) + 1e-9)[1])
        s_ref, s_gen = h_ref / h_ref.sum(), h_gen / h_gen.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(s_gen / np.where(s_ref > 0, s_ref, np.nan) - 1)
        sigma_bins = np.hypot(share_relative_errors(ref["hitmap_events"]), share_relative_errors(gen["hitmap_events"]))
        limits = float(cfg["hitmap_tolerance"]) + max_abs_pull_limit(h_ref.size, p_false) * sigma_bins
        excess = np.nan_to_num(rel - limits, nan=np.inf)
        worst = int(np.argmax(excess))
        dev, limit = float(np.nan_to_num(rel[worst], nan=np.inf)), float(limits[worst])
        fig["hitmap_largest_relative_error"] = float(np.max(sigma_bins))
        fig["hitmap_max_relative_difference"] = float(np.max(np.nan_to_num(rel, nan=np.inf)))
    else:
        dev, limit, excess = float("inf"), float(cfg["hitmap_tolerance"]), np.array([np.inf])
        fig["hitmap_max_relative_difference"] = dev
    if not np.max(excess) < 0:
        reasons.append(f"hit map (layer x v band, normalised) differs by {dev:.0%} in a bin "
                       f"(limit there {limit:.0%}: {cfg['hitmap_tolerance']:.0%} + statistical)")
    return fig, reasons


def compare_pulls(rows: list, cfg: dict) -> tuple[dict[str, float], list[str]]:
    """Figures and failure reasons of part (b) from :func:`b2luca.sim.pxd_pulls.pull_table` rows."""
    from b2luca.sim.pxd_pulls import PT_BINS

    by = {(r.mode, r.parameter, r.pt_low): r for r in rows}
    fig: dict[str, float] = {}
    reasons = []
    for lo, hi in PT_BINS:
        tag = f"pt{lo:g}-{hi:g}"
        sep = []
        for par in ("d0", "z0"):
            sim, gan, none = (by[(m, par, lo)] for m in ("simulated", "gan", "none"))
            for r in (sim, gan, none):
                fig[f"{par}_pull_width_{r.mode}_{tag}"] = r.width
                fig[f"{par}_pull_width_error_{r.mode}_{tag}"] = r.error
            d_gan = abs(gan.width - sim.width) / np.hypot(gan.error, sim.error)
            d_none = abs(none.width - sim.width) / np.hypot(none.error, sim.error)
            fig[f"{par}_gan_vs_simulated_sigma_{tag}"] = float(d_gan)
            fig[f"{par}_none_vs_simulated_sigma_{tag}"] = float(d_none)
            sep.append(d_none)
            if not d_gan < float(cfg["agree_sigma"]):
                reasons.append(f"{par} pull width, {lo:g} < pT < {hi:g} GeV: GAN {gan.width:.3f}±{gan.error:.3f} vs "
                               f"simulated {sim.width:.3f}±{sim.error:.3f} ({d_gan:.1f} sigma, limit {cfg['agree_sigma']})")
        if not max(np.nan_to_num(sep)) > float(cfg["differ_sigma"]):
            reasons.append(f"{lo:g} < pT < {hi:g} GeV: the pull widths without background do not differ from those "
                           f"with simulated background by {cfg['differ_sigma']} sigma: the check is not sensitive")
    return fig, reasons


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate PXDBackgroundGAN (see the module docstring); returns a Verdict."""
    from b2luca.contract import Verdict, read_input_data
    from b2luca.ml.pxd_gan import GanBackground
    from b2luca.reco.geometry import nominal_geometry
    from b2luca.sim.pxd_pulls import PT_BINS, pull_table, track_pulls
    from calibrations._common import calibration_output, expert_config_dict, pyplot, save_figure, write_csv
    from calibrations.pxd_background_gan import read_background

    cfg = {**settings.expert_config, **expert_config_dict(expert_config)}
    geom = nominal_geometry()
    gan = GanBackground(calibration_output(job_path, "PXDBackgroundGAN", "PXDBackgroundGAN"))
    files = [p for p, _ in read_input_data(input_data_path).get("random_calib", [])]
    ref_pixels, n_events = read_background(files, int(cfg["max_events"]))
    if n_events == 0:
        return Verdict(passed=False, figures={}, plots=[], message="no random_calib events to compare with")
    seed = int(cfg["validation_seed"])
    ref = image_statistics(ref_pixels, n_events, geom)
    n_gen = generated_events(ref, cfg)
    gen = image_statistics(gan(np.random.default_rng(seed), n_gen, geom), n_gen, geom)
    figures, reasons = compare_images(ref, gen, cfg)
    figures.update(events_compared=float(n_events), events_generated=float(n_gen))
    rows = pull_table(track_pulls(int(cfg["track_events"]), seed, gan, max_pt=max(hi for _, hi in PT_BINS)))
    fig_b, reasons_b = compare_pulls(rows, cfg)
    figures.update(fig_b)
    reasons += reasons_b

    plt = pyplot()
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    bins = np.linspace(0, max(ref["occupancy"].max(), gen["occupancy"].max(), 1e-3) * 1.05, 40)
    ax[0, 0].hist(ref["occupancy"], bins, histtype="step", density=True, label="input (simulated)")
    ax[0, 0].hist(gen["occupancy"], bins, histtype="step", density=True, label="GAN")
    ax[0, 0].set_xlabel("occupancy per sensor and event")
    ax[0, 0].legend(fontsize=7)
    sizes = np.arange(1, MAX_SIZE + 1)
    for name, st in (("input", ref), ("GAN", gen)):
        ax[0, 1].step(sizes, st["cluster_sizes"] / max(st["cluster_sizes"].sum(), 1), where="mid", label=name)
        for layer in (0, 1):
            h = st["hitmap"][layer]
            ax[1, 0].plot((np.arange(h.size) + 0.5) * V_BAND, h / st["hitmap_events"].shape[0],
                          label=f"{name}, layer {layer + 1}")
    ax[0, 1].set_xlabel(f"cluster size [pixels] (last bin >= {MAX_SIZE})")
    ax[0, 1].legend(fontsize=7)
    ax[1, 0].set_xlabel("v [pixel row]")
    ax[1, 0].set_ylabel("fired pixels per event")
    ax[1, 0].legend(fontsize=6)
    for k, mode in enumerate(("simulated", "gan", "none")):
        sel = [r for r in rows if r.mode == mode]
        x = np.arange(len(sel)) + 0.2 * (k - 1)
        ax[1, 1].errorbar(x, [r.width for r in sel], [r.error for r in sel], fmt="os^"[k], label=mode)
        ax[1, 1].set_xticks(np.arange(len(sel)), [f"{r.parameter}\n{r.pt_low:g}-{r.pt_high:g}" for r in sel], fontsize=7)
    ax[1, 1].set_ylabel("pull width")
    ax[1, 1].legend(fontsize=7)
    columns = {k: [getattr(r, k) for r in rows] for k in ("mode", "parameter", "pt_low", "pt_high", "n", "width", "error")}
    plots = [save_figure(fig, "pxd_background_gan.png"), write_csv("pxd_background_gan_pulls.csv", columns)]
    return Verdict(passed=not reasons, figures=figures, plots=plots, message="OK" if not reasons else "; ".join(reasons))
