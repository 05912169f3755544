"""Impact-parameter pulls of simulated tracks with PXD beam background overlaid (issue 16; the GAN's
tracking check).

The same simulated hadron events (same tracks, same hits) are reconstructed three times: with
background from the toy full simulation, with background from a generator (the GAN payload) and
without background (:mod:`.pxd_overlay`).  Tracks are fitted with the truth constants (no
miscalibration: only the background changes the pulls); the pull of d0 and z0 is
(fitted - generated) / fitted error, per pT bin.  The width is the standard deviation of the pulls
within |pull| < ``clip``; its error from the fourth moment, sqrt((m4 - s^4) / N) / (2 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..reco.fit import fit_tracks
from ..reco.geometry import C_B, Geometry, nominal_geometry
from ..reco.measurements import Constants, Measurements, build_measurements
from ..reco.robust import subset_measurements
from .generate import MASS
from .pxd_overlay import BackgroundSource, background_for_events, overlay_pxd_hits
from .simulate import simulate_sample
from .truth import make_truth, truth_payloads

PT_BINS = ((0.0, 0.2), (0.2, 1.0))  # GeV
MODES = ("simulated", "gan", "none")


@dataclass
class PullWidth:
    """Width of the pulls of one parameter in one pT bin for one background mode."""

    mode: str
    parameter: str
    pt_low: float
    pt_high: float
    n: int
    width: float
    error: float


def pull_width(pulls: np.ndarray, clip: float = 10.0) -> tuple[float, float, int]:
    """(standard deviation within |pull| < clip, its error, N)."""
    x = np.asarray(pulls, float)
    x = x[np.isfinite(x) & (np.abs(x) < clip)]
    if x.size < 10:
        return float("nan"), float("nan"), int(x.size)
    c = x - x.mean()
    s2 = float(np.mean(c ** 2))
    m4 = float(np.mean(c ** 4))
    s = np.sqrt(s2)
    return float(s), float(np.sqrt(max(m4 - s2 ** 2, 0.0) / x.size) / (2 * s)), int(x.size)


def track_pulls(n_events: int, seed: int, generator: BackgroundSource | None, modes: Sequence[str] = MODES,
                geom: Geometry | None = None, max_pt: float | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{mode: {"pt", "d0", "z0"}}: pulls of the well-fitted tracks of ``n_events`` hadron events (with
    ``max_pt``: only those of generated pT below it [GeV], the others not fitted: the same pulls, to the
    round-off of the batched fit, ~1e-9).

    Every mode sees the same tracks and hits; the background of ``simulated`` and ``gan`` is drawn from
    the same seed (different generators).  Without background the tracks are fitted once; with
    background only the tracks whose rows the background changed are fitted again."""
    geom = geom or nominal_geometry()
    truth = make_truth(seed, geom)
    constants = Constants.from_payloads(truth_payloads(truth, geom), geom)
    res = simulate_sample("hadron_calib", n_events, np.random.default_rng(seed), truth, geom)
    assert res.tracks is not None
    tracks = res.tracks
    first = np.searchsorted(tracks.event, tracks.event)
    cand = np.arange(len(tracks)) - first
    truth_key = (tracks.event + 1).astype(np.int64) * 65536 + cand
    out: dict[str, dict[str, np.ndarray]] = {}
    reference: tuple[Measurements, _Fit] | None = None  # the fit without background, shared by the modes
    for mode in sorted(modes, key=lambda m: m != "none"):  # "none" first: the others reuse its fits
        raw = {k: dict(v) for k, v in res.raw.items()}
        hits0 = {**raw["pxd"], "event": raw["pxd"]["event"] - 1}
        bkg = background_for_events(mode, np.random.default_rng([seed, 16]), n_events, geom, generator, hits0)
        if bkg is not None:
            raw["pxd"] = overlay_pxd_hits(raw["pxd"], {**bkg, "event": np.asarray(bkg["event"]) + 1}, geom)
        for tree in raw.values():
            if "event" in tree:
                tree["gevent"] = tree["event"]
        meas = build_measurements(raw, constants, geom)
        if max_pt is not None:  # a track's fit does not depend on the others (fit_tracks): drop before fitting
            key = meas.track_key[:, 0] * 65536 + meas.track_key[:, 1]
            pt_cand = C_B / np.abs(tracks.h[np.searchsorted(truth_key, key), 2])
            meas = subset_measurements(meas, np.flatnonzero(pt_cand < max_pt))
        fit = _fit_reusing(meas, reference, constants, geom)
        if mode == "none":
            reference = (meas, fit)
        key = meas.track_key[:, 0] * 65536 + meas.track_key[:, 1]
        idx = np.searchsorted(truth_key, key)
        ok = fit.ok & (fit.chi2 < 5 * np.maximum(fit.ndf, 1))
        h_true = tracks.h[idx]
        err = np.sqrt(np.clip(np.diagonal(fit.cov, axis1=1, axis2=2), 0, None))
        pt = C_B / np.abs(h_true[:, 2])  # omega = q C_B / pT
        out[mode] = {"pt": pt[ok], "d0": ((fit.params[:, 0] - h_true[:, 0]) / err[:, 0])[ok],
                     "z0": ((fit.params[:, 3] - h_true[:, 3]) / err[:, 3])[ok]}
    return {mode: out[mode] for mode in modes}


def changed_tracks(meas: Measurements, reference: Measurements) -> np.ndarray | None:
    """Sorted indices of the candidates whose measurement rows differ from ``reference`` (the same events
    without background), or None when the two do not have the same candidates and rows."""
    if (meas.track_key.shape != reference.track_key.shape or meas.track.shape != reference.track.shape
            or not np.array_equal(meas.track_key, reference.track_key) or not np.array_equal(meas.track, reference.track)
            or not np.array_equal(meas.hit, reference.hit) or not np.array_equal(meas.det, reference.det)):
        return None
    differ = (meas.m != reference.m) | (meas.sigma != reference.sigma) | np.any(meas.approx_pos != reference.approx_pos, 1)
    return np.unique(meas.track[differ])


def _fit_reusing(meas: Measurements, reference: "tuple[Measurements, _Fit] | None", constants: Constants,
                 geom: Geometry) -> _Fit:
    """The fit of every candidate of ``meas``; with a ``reference`` (the fit of the same candidates without
    background) only the candidates whose rows the background changed are fitted again: a track's fit
    depends only on its own rows (fit_tracks stops each track on its own criterion), so the others'
    results are the reference's."""
    changed = None if reference is None else changed_tracks(meas, reference[0])
    if changed is None or reference is None:
        full = fit_tracks(meas, constants, geom, mass=MASS[2], global_derivatives=False)
        return _Fit(full.params, full.cov, full.chi2, full.ndf, full.ok)
    ref = reference[1]
    params, cov, chi2, ndf, ok = (np.array(a, copy=True) for a in (ref.params, ref.cov, ref.chi2, ref.ndf, ref.ok))
    if changed.size:
        sub = fit_tracks(subset_measurements(meas, changed), constants, geom, mass=MASS[2], global_derivatives=False)
        params[changed], cov[changed], chi2[changed], ndf[changed], ok[changed] = (
            sub.params, sub.cov, sub.chi2, sub.ndf, sub.ok)
    return _Fit(params, cov, chi2, ndf, ok)


@dataclass
class _Fit:
    """The per-track part of a :class:`~b2luca.reco.fit.FitResult` that the pulls need."""

    params: np.ndarray
    cov: np.ndarray
    chi2: np.ndarray
    ndf: np.ndarray
    ok: np.ndarray


def pull_table(pulls: dict[str, dict[str, np.ndarray]], clip: float = 10.0) -> list[PullWidth]:
    """Pull widths per mode, parameter (d0, z0) and pT bin."""
    rows = []
    for mode, p in pulls.items():
        for lo, hi in PT_BINS:
            m = (p["pt"] >= lo) & (p["pt"] < hi)
            for par in ("d0", "z0"):
                w, e, n = pull_width(p[par][m], clip)
                rows.append(PullWidth(mode, par, lo, hi, n, w, e))
    return rows


__all__ = ["MODES", "PT_BINS", "PullWidth", "changed_tracks", "pull_table", "pull_width", "track_pulls"]
