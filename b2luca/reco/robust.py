"""Robust batch track fit: fit every candidate, drop only those whose fit fails.

:func:`b2luca.reco.fit.fit_tracks` fits a whole batch at once; one singular candidate makes the batch
raise.  :func:`fit_robust` fits in chunks and bisects a chunk that fails until only the offending
candidates are left out, then keeps the tracks with finite parameters, covariance and chi2.  It is
what the cDST production and the alignment calibration use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .fit import FitResult, TrackStart, fit_tracks
from .measurements import Constants, Measurements

#: At most this many Gauss-Newton iterations from the algebraic seed (the fit stops once chi2 settles;
#: 2 already converge to < 1e-5 sigma for di-muons).
FIT_ITERATIONS = 4
#: By default no per-layer scattering kinks: twice as fast, but the errors come from the hit resolution
#: only (chi2/ndf ~1.07 for di-muons, ~10 for soft hadrons); ``scattering=True`` gives chi2/ndf ~1.0 for all.
FIT_SCATTERING = False

#: Per-row arrays of :class:`~b2luca.reco.fit.FitResult` that :func:`fit_robust` can return.
ROW_KEYS = ("residual", "local_derivs", "global_derivs", "global_labels")
_TRACK_KEYS = ("params", "cov", "chi2", "ndf")


@dataclass(frozen=True)
class RobustFit:
    """The fitted tracks: ``meas`` holds only their measurement rows (tracks renumbered 0..T-1).

    Per track: ``params`` (T, 5), ``cov`` (T, 5, 5), ``chi2``, ``ndf``.  Per row of ``meas``: the
    arrays named in ``row_keys`` of :func:`fit_robust` (the others are None).  ``failed``: candidates
    left out because their fit failed or gave non-finite results.
    """

    meas: Measurements
    params: np.ndarray
    cov: np.ndarray
    chi2: np.ndarray
    ndf: np.ndarray
    failed: int
    residual: np.ndarray | None = None
    local_derivs: np.ndarray | None = None
    global_derivs: np.ndarray | None = None
    global_labels: np.ndarray | None = None


def subset_measurements(meas: Measurements, tracks: np.ndarray) -> Measurements:
    """The measurement rows of the candidates ``tracks`` (sorted distinct indices), tracks renumbered 0..n-1."""
    tracks = np.asarray(tracks)
    if tracks.size and np.all(np.diff(tracks) == 1):  # a range: its rows are one slice
        t0, t1 = int(tracks[0]), int(tracks[-1]) + 1
        r0, r1 = np.searchsorted(meas.track, [t0, t1])
        rows = slice(int(r0), int(r1))
        cols = {f.name: getattr(meas, f.name)[rows] for f in dataclasses.fields(meas)
                if f.name not in ("track_key", "track")}
        return dataclasses.replace(meas, track_key=meas.track_key[t0:t1], track=meas.track[rows] - t0, **cols)
    keep = np.isin(meas.track, tracks)
    remap = np.full(meas.n_tracks, -1, np.int64)
    remap[tracks] = np.arange(tracks.size)
    cols = {f.name: getattr(meas, f.name)[keep] for f in dataclasses.fields(meas)
            if f.name not in ("track_key", "track")}
    return dataclasses.replace(meas, track_key=meas.track_key[tracks], track=remap[meas.track[keep]], **cols)


def fit_bisecting(meas: Measurements, constants: Constants, *, chunk: int, n_iter: int, scattering: bool,
                  mass: "float | np.ndarray | None" = None, global_derivatives: bool = True,
                  start: TrackStart | None = None) -> list[tuple[np.ndarray, FitResult]]:
    """``[(candidate indices, FitResult)]`` of ``meas`` fitted in chunks of ``chunk``; a chunk whose fit fails
    (singular system, non-finite values) is bisected until only the offending candidates are left out.
    ``mass``: the scattering hypothesis per candidate (or a scalar); None: the fit's default.
    ``global_derivatives``: passed to :func:`b2luca.reco.fit.fit_tracks`; ``start``: its warm start, per candidate
    of ``meas`` (:class:`b2luca.reco.fit.TrackStart`; None: every candidate from its seed)."""
    masses = None if mass is None else np.broadcast_to(np.asarray(mass, float), (meas.n_tracks,))
    if start is not None and start.params.shape[0] != meas.n_tracks:  # one start per candidate, in order
        raise ValueError(f"warm start: {start.params.shape[0]} tracks' parameters for {meas.n_tracks} candidates")

    def fit(idx: np.ndarray) -> list[tuple[np.ndarray, FitResult]]:
        sub = subset_measurements(meas, idx)
        extra: dict = {} if masses is None else {"mass": masses[idx]}
        if start is not None:
            extra["start"] = start.subset(idx)
        try:
            with np.errstate(all="ignore"):
                return [(idx, fit_tracks(sub, constants, n_iter=n_iter, scattering=scattering,
                                         global_derivatives=global_derivatives, **extra))]
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            if idx.size == 1:
                return []
            half = idx.size // 2
            return fit(idx[:half]) + fit(idx[half:])

    parts: list[tuple[np.ndarray, FitResult]] = []
    for first in range(0, meas.n_tracks, chunk):
        parts += fit(np.arange(first, min(first + chunk, meas.n_tracks)))
    return parts


def fit_robust(meas: Measurements, constants: Constants, *, chunk: int = 1000,
               row_keys: tuple[str, ...] = ("residual",), scattering: bool = FIT_SCATTERING,
               n_iter: int = FIT_ITERATIONS) -> RobustFit:
    """Fit all candidates of ``meas`` in chunks of ``chunk``; a chunk whose fit fails (singular system)
    is bisected so that only the offending candidates are dropped.  ``row_keys``: which per-row arrays
    (a subset of :data:`ROW_KEYS`) to keep."""
    unknown = sorted(set(row_keys) - set(ROW_KEYS))
    if unknown:
        raise ValueError(f"fit_robust: unknown row key(s) {unknown}; known: {', '.join(ROW_KEYS)}")

    parts = fit_bisecting(meas, constants, chunk=chunk, n_iter=n_iter, scattering=scattering,
                          global_derivatives=bool({"global_derivs", "global_labels"} & set(row_keys)))
    idx = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cat = {k: np.concatenate([getattr(p[1], k) for p in parts]) if parts else np.zeros(0)
           for k in _TRACK_KEYS + tuple(row_keys)}
    ok = (np.all(np.isfinite(cat["params"]), axis=1) & np.all(np.isfinite(cat["cov"]), axis=(1, 2))
          & np.isfinite(cat["chi2"])) if parts else np.zeros(0, bool)
    good = idx[ok]
    row_ok = np.repeat(ok, np.concatenate([np.bincount(p[1].meas.track, minlength=p[1].meas.n_tracks)
                                           for p in parts])) if parts else np.zeros(0, bool)
    rows = {k: cat[k][row_ok] for k in row_keys}
    return RobustFit(meas=subset_measurements(meas, good), params=cat["params"][ok], cov=cat["cov"][ok],
                     chi2=cat["chi2"][ok], ndf=cat["ndf"][ok], failed=int(meas.n_tracks - good.size), **rows)


__all__ = ["FIT_ITERATIONS", "FIT_SCATTERING", "ROW_KEYS", "RobustFit", "fit_robust", "subset_measurements"]
