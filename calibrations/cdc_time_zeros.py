"""CDC time offsets (T0) per front-end board.

Fits the drift-time distribution of the hits of di-muon and hadronic events, board by board, and
stores the time offset of each board in the CDCTimeZeros payload (drift time = tdc - t0[board]).
Runs on raw data: the offsets are needed by the tracking used in every later calibration.

Method: leading- and trailing-edge maximum-likelihood fit of the raw TDC spectrum, chosen over a
track-based fit because it needs no tracking: at this stage neither the CDC alignment (50 um layer
shifts would bias track-based T0s by ~1 ns per board) nor the T0s themselves are known.  Tracks
cross the cells uniformly, so the true drift distance |d| of a hit in layer l is uniform on
[0, D_l], D_l = r_l sin(pi / n_wires_l) (half the cell), and the measured distance is smeared by the
Gaussian resolution sigma.  The TDC value t = t0[board] + d_meas / v_drift therefore follows
p(t) = v/D_l [Phi(x/sigma) - Phi((x - D_l)/sigma)], x = v (t - t0).  All boards are fitted at once
(Newton iterations vectorised over boards, one common sigma fitted alongside; each iteration one compiled pass
over the hits, :mod:`calibrations._cdc_t0_kernels`); errors from the observed Fisher information.  Boards with
fewer than ``min_hits_per_board`` hits keep the t0 in force (database chain, nominal 0) and get a NaN error.
Extra payload keys: ``t0_error`` [ns], ``n_hits``, ``sigma_mm`` (1,) the fitted resolution.
``payload_boundaries`` must be [] (one payload per bucket).
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

quality_flags = [INPUT_DATA_FILTERS["Run Type"]["physics"],
                 INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                 INPUT_DATA_FILTERS["Magnet"]["On"]]

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="CDCTimeZeros",
                               expert_username="cdc_expert",
                               subsystem="cdc",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=["mumu_tight_or_highm_calib", "hadron_calib"],
                               input_data_filters={
                                   "mumu_tight_or_highm_calib":
                                       [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"]] + quality_flags,
                                   "hadron_calib":
                                       [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]] + quality_flags},
                               depends_on=[],
                               expert_config={"max_files_per_run": 5,
                                              "min_hits_per_board": 500,
                                              "max_iterations": 30,
                                              "initial_sigma_mm": 0.15,
                                              "payload_boundaries": []},
                               produced_payloads=["CDCTimeZeros"])

PAYLOAD = "CDCTimeZeros"


def _terms(x: np.ndarray, half_cell: np.ndarray, sigma: float):
    """log p, d log p / dx, d2 log p / dx2, d log p / d sigma and d2 log p / d sigma2 of the edge model at x (mm).

    With a = x / sigma, b = (x - D) / sigma, F = Phi(a) - Phi(b), fa = phi(a) / F, fb = phi(b) / F:
    d log p / d sigma = (-a fa + b fb) / sigma and, since d(a phi(a))/d sigma = -a (1 - a^2) phi(a) / sigma,
    d2 log p / d sigma2 = (a (1 - a^2) fa - b (1 - b^2) fb) / sigma^2 - ds / sigma - ds^2."""
    from scipy.special import log_ndtr

    a, b = x / sigma, (x - half_cell) / sigma
    # F = Phi(a) - Phi(b), computed stably in both tails; each element's log_ndtr only in the tail it needs
    log_f = np.empty_like(a)
    left = a < 0
    la = log_ndtr(a[left])
    log_f[left] = la + np.log1p(-np.exp(np.minimum(log_ndtr(b[left]) - la, -1e-300)))
    right = ~left
    lb = log_ndtr(-b[right])
    log_f[right] = lb + np.log1p(-np.exp(np.minimum(log_ndtr(-a[right]) - lb, -1e-300)))
    fa = np.exp(-0.5 * a * a - 0.5 * np.log(2 * np.pi) - log_f)  # phi(a) / F
    fb = np.exp(-0.5 * b * b - 0.5 * np.log(2 * np.pi) - log_f)  # phi(b) / F
    g = (fa - fb) / sigma
    h = (-a * fa + b * fb) / sigma ** 2 - g * g
    ds = (-a * fa + b * fb) / sigma
    dss = (a * (1 - a * a) * fa - b * (1 - b * b) * fb) / sigma ** 2 - ds / sigma - ds * ds
    return log_f - np.log(half_cell), g, h, ds, dss


def _sums_numpy(board: np.ndarray, tdc: np.ndarray, half: np.ndarray, t0: np.ndarray, sigma: float, v: float,
                nb: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(per-board sum of g, of h, total ds, total dss) over the hits inside the fit window, with :func:`_terms`
    (the numpy reference of :func:`calibrations._cdc_t0_kernels.accumulate`)."""
    x = v * (tdc - t0[board])
    inside = (x > -8 * sigma) & (x < half + 8 * sigma)
    _lp, g, h, ds, dss = _terms(np.where(inside, x, 0.5 * half), half, sigma)
    return (np.bincount(board, np.where(inside, g, 0), minlength=nb),
            np.bincount(board, np.where(inside, h, 0), minlength=nb),
            float(np.sum(np.where(inside, ds, 0))), float(np.sum(np.where(inside, dss, 0))))


def fit_t0(board: np.ndarray, layer: np.ndarray, tdc: np.ndarray, previous_t0: np.ndarray, min_hits: int,
           max_iterations: int = 30, sigma0: float = 0.15, start: np.ndarray | None = None,
           compiled: bool = True) -> dict[str, np.ndarray]:
    """Per-board t0 (module docstring) from hit arrays; boards below ``min_hits`` keep ``previous_t0``.

    ``start``: starting values (default: the cell-average estimate mean(tdc) - D/(2 v)).  ``compiled``: the sums
    of each iteration in one compiled pass over the hits (:mod:`calibrations._cdc_t0_kernels`); False: with
    numpy and scipy (:func:`_terms`, the reference; the same t0s to round-off, several times slower)."""
    from b2luca.reco.geometry import CDC_DRIFT_VELOCITY as V
    from b2luca.reco.geometry import nominal_geometry

    geom = nominal_geometry()
    nb = geom.n_cdc_boards
    board = np.ascontiguousarray(board, np.int64)
    layer = np.asarray(layer, np.int64)
    if board.size and (board.min() < 0 or board.max() >= nb or layer.min() < 0 or layer.max() >= geom.n_cdc_layers):
        raise ValueError(f"CDC hits with board outside 0..{nb - 1} or layer outside 0..{geom.n_cdc_layers - 1}")
    tdc = np.ascontiguousarray(tdc, float)
    half = np.ascontiguousarray((geom.cdc_r * np.sin(np.pi / geom.cdc_nwires))[layer], float)  # per layer, then per hit
    n = np.bincount(board, minlength=nb)
    # start: the mean drift distance is D/2 for a uniform cell
    t0 = np.bincount(board, tdc - 0.5 * half / V, minlength=nb) / np.maximum(n, 1)
    if start is not None:
        t0 = np.where(np.isfinite(start), start, t0)
    if compiled:
        from b2luca.kernel_loading import import_kernels

        accumulate = import_kernels("calibrations._cdc_t0_kernels", settings.name).accumulate

        g_buf, h_buf = np.empty(nb), np.empty(nb)

        def sums(t0: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, float, float]:
            s1, dss = accumulate(board, tdc, half, t0, sigma, V, g_buf, h_buf)
            return g_buf, h_buf, s1, dss
    else:
        def sums(t0: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, float, float]:
            return _sums_numpy(board, tdc, half, t0, sigma, V, nb)
    sigma = float(sigma0)
    for _ in range(int(max_iterations)):
        g_sum, h_sum, s1, dss = sums(t0, sigma)
        grad = -V * g_sum
        hess = V * V * h_sum
        step = np.where(hess < 0, -grad / np.where(hess < 0, hess, -1.0), 0.0)
        step = np.clip(step, -5.0, 5.0)
        t0 = t0 + step
        # sigma: one Newton step on its score (analytic second derivative, at the t0 of this iteration)
        if dss < 0:
            sigma = float(np.clip(sigma - s1 / dss, 0.5 * sigma, 2 * sigma))
        if np.max(np.abs(step)) < 1e-3:  # ns, far below the errors (~0.5 ns)
            break
    info = -V * V * sums(t0, sigma)[1]
    good = (n >= max(int(min_hits), 10)) & (info > 0)
    err = np.where(good, 1.0 / np.sqrt(np.where(info > 0, info, 1.0)), np.nan)
    return {"board": np.arange(nb, dtype=np.int32), "t0": np.where(good, t0, previous_t0),
            "t0_error": err, "n_hits": n.astype(np.int32), "sigma_mm": np.array([sigma])}


def calibrate(job) -> None:
    """Per-board CDC T0s from the raw TDC spectra of mumu and hadron events, stored in job.output_db."""
    from calibrations._common import first_exprun, limit_files_per_run, previous_payload, read_branches, require_files

    from b2luca.reco.geometry import nominal_geometry

    cfg = {**settings.expert_config, **job.expert_config}
    if cfg.get("payload_boundaries"):
        raise ValueError(f"{settings.name}: expert_config.payload_boundaries = {cfg['payload_boundaries']!r}: this "
                         "calibration writes one payload per bucket; expected []")
    files = []
    for name in sorted(settings.input_data_names):  # a frozenset: its order changes with the hash seed
        files += limit_files_per_run(job.input_files.get(name, []), cfg.get("max_files_per_run"))
    require_files(files, f"{settings.name}/{'+'.join(sorted(settings.input_data_names))}")
    hits = read_branches(files, "cdc", ["board", "layer", "tdc"])
    nb = nominal_geometry().n_cdc_boards
    previous = previous_payload(job.database_chain, PAYLOAD, first_exprun(job.requested_iov))
    prev = np.zeros(nb)
    prev[np.asarray(previous["board"], np.int64)] = np.asarray(previous["t0"], float)
    res = fit_t0(hits["board"], hits["layer"], hits["tdc"], prev, int(cfg["min_hits_per_board"]),
                 int(cfg["max_iterations"]), float(cfg["initial_sigma_mm"]))
    ok = np.isfinite(res["t0_error"])
    if not ok.any():
        raise RuntimeError(f"{settings.name}: no board has {cfg['min_hits_per_board']} hits "
                           f"({hits['board'].size} hits in {len(files)} files)")
    job.log.info("%s: %d hits, %d/%d boards calibrated, median error %.3f ns, fitted resolution %.1f um",
                 settings.name, hits["board"].size, int(ok.sum()), nb, float(np.median(res["t0_error"][ok])),
                 1e3 * float(res["sigma_mm"][0]))
    job.output_db.store(PAYLOAD, res, job.output_iov)
