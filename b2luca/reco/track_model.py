"""The track model shared by the reconstruction and the alignment: a broken-line view of the reco fit.

:func:`fit_track_model` runs the reconstruction's track fit (:func:`b2luca.reco.fit.fit_tracks`, helix +
multiple-scattering kinks at the beam pipe, the six VXD layers and the CDC inner wall) and returns, per
fitted track, what a Millepede local fit needs (General-Broken-Lines style):

* the trajectory (perigee ``params`` at the IP, ``cov``, fitted ``kinks``),
* per measurement row: ``residual`` (m - prediction), ``sigma``, ``local_derivs`` w.r.t. the track's
  local parameters = the 5 helix parameters followed by its *active* kinks only (the kinks that
  influence at least one of its measurements, renumbered 5, 6, ... per track; ``n_local`` per track),
  ``global_derivs``/``global_labels`` (alignment labels, see :mod:`b2luca.reco.fit`),
* one pseudo-measurement per active kink: value 0 - fitted kink, error = the Highland width of the
  material (from the fitted momentum and the particle ``mass``), local derivative 1, no globals.

:meth:`TrackModel.dense_rows` lays them out as dense Mille rows (one record per track: the measurement
rows, then the kink rows, then optional beam-spot rows from :func:`beam_spot_rows`).  With the kinks as
local parameters soft hadron tracks and cosmics get the weights multiple scattering gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import helix as H
from .fit import MUON_MASS, START_KINKS, FitResult, TrackStart
from .measurements import Constants, Measurements
from .robust import fit_bisecting, subset_measurements

__all__ = ["BeamSpotConstraint", "TrackModel", "beam_spot_rows", "fit_track_model", "warm_start"]


@dataclass(frozen=True)
class TrackModel:
    """Fitted tracks (renumbered 0..T-1, rows of ``meas``) with compact broken-line local derivatives."""

    meas: Measurements
    params: np.ndarray  # (T, 5) perigee at the IP
    cov: np.ndarray  # (T, 5, 5)
    chi2: np.ndarray  # (T,) incl. the kink pseudo-measurements
    ndf: np.ndarray  # (T,) measurement rows - 5
    n_local: np.ndarray  # (T,) 5 + number of active kinks
    residual: np.ndarray  # (R,) m - pred
    local_derivs: np.ndarray  # (R, max n_local) d(pred)/d(local), columns >= n_local of the track are 0
    global_derivs: np.ndarray  # (R, 6)
    global_labels: np.ndarray  # (R, 6) int64, 0 = unused
    kink_track: np.ndarray  # (K,) track of each kink pseudo-measurement
    kink_column: np.ndarray  # (K,) its local column (5..n_local-1)
    kink_residual: np.ndarray  # (K,) 0 - fitted kink angle
    kink_sigma: np.ndarray  # (K,) Highland width [rad]
    failed: int  # candidates whose fit failed or gave non-finite results
    #: (T, START_KINKS) every fitted kink angle (arm +1 first, zero-padded): with ``params`` the warm start of a
    #: refit of the same candidates (:func:`warm_start`)
    kinks: np.ndarray | None = None

    @property
    def n_tracks(self) -> int:
        return int(self.params.shape[0])

    def momentum(self) -> np.ndarray:
        """|p| [GeV] per track."""
        return H.momentum(self.params)

    def dense_rows(self, tracks: np.ndarray | None = None, extra: "ExtraRows | None" = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Dense Mille rows ``(value, sigma, local, glb_label, glb_der, rec_ptr)`` of ``tracks`` (sorted
        indices; all by default), one record per track: its measurements (rows with a NaN residual are
        dropped), its kink pseudo-measurements, then the ``extra`` rows of that track (e.g. the beam spot).
        Feed them to :func:`b2luca.alignment.records_from_dense`."""
        sel = np.arange(self.n_tracks) if tracks is None else np.asarray(tracks, np.int64)
        keep_t = np.zeros(self.n_tracks, bool)
        keep_t[sel] = True
        ng = self.global_labels.shape[1]
        nl = self.local_derivs.shape[1]
        parts = []
        m = keep_t[self.meas.track] & np.isfinite(self.residual)
        parts.append((self.meas.track[m], self.residual[m], self.meas.sigma[m], self.local_derivs[m],
                      self.global_labels[m], self.global_derivs[m]))
        k = keep_t[self.kink_track]
        kl = np.zeros((int(k.sum()), nl))
        kl[np.arange(kl.shape[0]), self.kink_column[k]] = 1.0
        parts.append((self.kink_track[k], self.kink_residual[k], self.kink_sigma[k], kl,
                      np.zeros((kl.shape[0], ng), np.int64), np.zeros((kl.shape[0], ng))))
        if extra is not None:
            e = keep_t[extra.track]
            if extra.local.shape[1] > nl or extra.glb_label.shape[1] > ng:
                raise ValueError("extra rows have more local or global columns than the track model")
            el = np.zeros((int(e.sum()), nl))
            el[:, :extra.local.shape[1]] = extra.local[e]
            lab = np.zeros((el.shape[0], ng), np.int64)
            der = np.zeros((el.shape[0], ng))
            lab[:, :extra.glb_label.shape[1]] = extra.glb_label[e]
            der[:, :extra.glb_der.shape[1]] = extra.glb_der[e]
            parts.append((extra.track[e], extra.value[e], extra.sigma[e], el, lab, der))
        trk = np.concatenate([p[0] for p in parts])
        kind = np.concatenate([np.full(p[0].size, i) for i, p in enumerate(parts)])
        order = np.lexsort((kind, trk))
        cat = [np.concatenate([p[i] for p in parts])[order] for i in range(1, 6)]
        counts = np.bincount(np.searchsorted(sel, trk[order]), minlength=sel.size)
        rec_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cat[0], cat[1], cat[2], cat[3], cat[4], rec_ptr


@dataclass(frozen=True)
class ExtraRows:
    """Additional measurement rows of tracks (value = residual at the fit, local/global derivatives)."""

    track: np.ndarray
    value: np.ndarray
    sigma: np.ndarray
    local: np.ndarray  # (n, <= 5 + ...) d(pred)/d(local)
    glb_label: np.ndarray  # (n, g)
    glb_der: np.ndarray  # (n, g)


@dataclass(frozen=True)
class BeamSpotConstraint:
    """The beam spot as a measurement of collision tracks: transverse position ``position`` (x, y) [mm]
    (current value of the global parameters ``labels`` (x, y)) and size ``size`` (sigma x, sigma y) [mm]."""

    position: tuple[float, float]
    size: tuple[float, float]
    labels: tuple[int, int]


def beam_spot_rows(model: TrackModel, tracks: np.ndarray, bs: BeamSpotConstraint) -> ExtraRows:
    """One pseudo-measurement per track of ``tracks``: the signed distance of the track from the beam axis.

    A track from the vertex v has d0 = v_x sin(phi0) - v_y cos(phi0); the row measures 0 with prediction
    d0 - (b_x sin(phi0) - b_y cos(phi0)) and error sqrt((s_x sin(phi0))^2 + (s_y cos(phi0))^2) (the beam
    size seen by the track).  Local derivatives w.r.t. d0 and phi0, global ones w.r.t. the beam-spot
    position (labels ``bs.labels``), so the beam spot is fitted together with the alignment.

    One row per track treats the tracks as independent: for events with several tracks (one vertex) use
    :func:`b2luca.alignment.vertex.event_vertex_records`, which measures the beam spot once per event."""
    t = np.asarray(tracks, np.int64)
    d0, phi = model.params[t, 0], model.params[t, 1]
    bx, by = bs.position
    s, c = np.sin(phi), np.cos(phi)
    pred = d0 - (bx * s - by * c)
    local = np.zeros((t.size, 2))
    local[:, 0] = 1.0
    local[:, 1] = -(bx * c + by * s)
    lab = np.broadcast_to(np.asarray(bs.labels, np.int64), (t.size, 2)).copy()
    der = np.stack([-s, c], 1)
    sigma = np.hypot(bs.size[0] * s, bs.size[1] * c)
    return ExtraRows(track=t, value=-pred, sigma=sigma, local=local, glb_label=lab, glb_der=der)


def _compact(fr: FitResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Local derivatives with the active kinks of every track renumbered 5, 6, ...; pseudo-measurements."""
    active = fr.kink_active
    nt = fr.params.shape[0]
    n_act = active.sum(axis=1)
    width = 5 + int(n_act.max(initial=0))
    newcol = 5 + np.cumsum(active, axis=1) - 1  # (T, nk)
    newcol = np.where(active, newcol, width)  # inactive kinks -> a dump column
    rows = fr.local_derivs.shape[0]
    out = np.zeros((rows, width + 1))
    out[:, :5] = fr.local_derivs[:, :5]
    if active.shape[1]:
        r = np.arange(rows)[:, None]
        out[r, newcol[fr.meas.track]] = fr.local_derivs[:, 5:]
    t, k = np.nonzero(active)
    return (out[:, :width], (5 + n_act).astype(np.int64) if nt else np.zeros(0, np.int64),
            t, newcol[t, k], -fr.kinks[t, k], fr.kink_sigma[t, k])


def fit_track_model(meas: Measurements, constants: Constants, *, mass: float | np.ndarray = MUON_MASS,
                    scattering: bool = True, n_iter: int = 4, chunk: int = 1000,
                    start: TrackStart | None = None) -> TrackModel:
    """Fit the track candidates of ``meas`` with the reconstruction's fit and return the broken-line model.

    ``mass``: particle hypothesis of the scattering widths (scalar or per candidate).  Chunks of ``chunk``
    candidates are fitted at once; a chunk whose fit fails is bisected so that only the offending
    candidates are dropped (counted in ``failed``): :func:`b2luca.reco.robust.fit_bisecting`.
    Candidates with non-finite parameters, covariance or chi2 are dropped too.  ``start``: a warm start per
    candidate of ``meas`` (:func:`warm_start` of an earlier model of the same candidates; None: the seeds)."""
    parts = fit_bisecting(meas, constants, chunk=chunk, n_iter=n_iter, scattering=scattering, mass=mass,
                          start=start)
    pieces = []
    for idx, fr in parts:
        ok = (np.all(np.isfinite(fr.params), axis=1) & np.all(np.isfinite(fr.cov), axis=(1, 2))
              & np.isfinite(fr.chi2) & fr.ok)
        pieces.append((idx, fr, ok) + _compact(fr))
    good = np.concatenate([p[0][p[2]] for p in pieces]) if pieces else np.zeros(0, np.int64)
    width = max((p[3].shape[1] for p in pieces), default=5)
    sub = subset_measurements(meas, good)

    def rows(p, arr):  # rows of the kept tracks of piece p
        return arr[p[2][p[1].meas.track]]

    loc = [np.pad(rows(p, p[3]), ((0, 0), (0, width - p[3].shape[1]))) for p in pieces]
    offset = np.cumsum([0] + [int(p[2].sum()) for p in pieces])
    kt, kc, kr, ks = [], [], [], []
    for i, p in enumerate(pieces):
        newidx = np.cumsum(p[2]) - 1
        keep = p[2][p[5]]
        kt.append(offset[i] + newidx[p[5][keep]])
        kc.append(p[6][keep])
        kr.append(p[7][keep])
        ks.append(p[8][keep])

    def cat(arrs, shape=(0,), dtype=float):
        return np.concatenate(arrs) if arrs else np.zeros(shape, dtype)

    def kinks(fr, ok):  # every fitted kink angle, padded to two arms
        k = fr.kinks[ok]
        return np.pad(k, ((0, 0), (0, START_KINKS - k.shape[1])))

    return TrackModel(
        meas=sub, params=cat([p[1].params[p[2]] for p in pieces], (0, 5)),
        cov=cat([p[1].cov[p[2]] for p in pieces], (0, 5, 5)), chi2=cat([p[1].chi2[p[2]] for p in pieces]),
        ndf=cat([p[1].ndf[p[2]] for p in pieces]), n_local=cat([p[4][p[2]] for p in pieces], dtype=np.int64),
        residual=cat([rows(p, p[1].residual) for p in pieces]), local_derivs=cat(loc, (0, width)),
        global_derivs=cat([rows(p, p[1].global_derivs) for p in pieces], (0, 6)),
        global_labels=cat([rows(p, p[1].global_labels) for p in pieces], (0, 6), np.int64),
        kink_track=cat(kt, dtype=np.int64), kink_column=cat(kc, dtype=np.int64), kink_residual=cat(kr),
        kink_sigma=cat(ks), failed=int(meas.n_tracks - good.size),
        kinks=cat([kinks(p[1], p[2]) for p in pieces], (0, START_KINKS)))


def warm_start(track_key: np.ndarray, params: np.ndarray, kinks: np.ndarray, meas: Measurements) -> TrackStart:
    """The warm start of a refit of the candidates of ``meas`` (e.g. with corrected alignment constants) from an
    earlier fit (a :class:`TrackModel`'s ``meas.track_key``, ``params`` and ``kinks``): each candidate of ``meas``
    found there (the same (event, candidate) key) starts from its fitted parameters and kink angles, the others
    (not fitted then) from their seeds (NaN parameters)."""
    out_params = np.full((meas.n_tracks, 5), np.nan)
    out_kinks = np.zeros((meas.n_tracks, START_KINKS))
    old, new = np.asarray(track_key, np.int64), meas.track_key.astype(np.int64)
    if old.shape[0] and new.shape[0]:
        width = int(max(old[:, 1].max(), new[:, 1].max())) + 1  # (event, candidate) as one key
        ko, kn = old[:, 0] * width + old[:, 1], new[:, 0] * width + new[:, 1]
        order = np.argsort(ko, kind="stable")
        pos = np.minimum(np.searchsorted(ko[order], kn), ko.size - 1)
        found = ko[order][pos] == kn
        src = order[pos[found]]
        out_params[found] = params[src]
        out_kinks[found] = kinks[src]
    return TrackStart(params=out_params, kinks=out_kinks)
