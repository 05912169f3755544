"""ECL crystal-energy images around a track's ECL entry (numpy only; input of the mu/pi CNN).

For every fitted cDST track the helix is extrapolated to the ECL barrel front face (r = 1250 mm);
the crystal it enters is the centre of a 7x7 window (theta rings x phi, phi wraps around).  Pixel
values are the calibrated crystal energies (``constant * amplitude`` of the ``ecl_full`` hits) in
GeV; crystals outside the barrel are 0.  Energy thresholds (1, 2, 5 MeV) zero the pixels below.
The samples are split by a hash of (experiment, run, event) into training (60 %), validation
(20 %, best epoch) and test (20 %, the validation script) so calibration and validation agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from ..iov import ExpRun
from ..reco import helix as H
from ..reco.geometry import ECL_NPHI, ECL_NTHETA, ECL_R, ECL_THETA_MAX, ECL_THETA_MIN, N_ECL_CRYSTALS

WINDOW = 7
THRESHOLDS_GEV = (0.001, 0.002, 0.005)
TRAIN, VALID, TEST = 0, 1, 2


@dataclass
class TrackImages:
    """One row per track: image (N, 7, 7) [GeV], pt, p [GeV], charge, theta ring of the entry crystal,
    experiment, run, event, cand, the sample split (TRAIN/VALID/TEST), and the number and charge sum
    of the well-fitted tracks of its event (ECL or not; for the di-muon selection)."""

    image: np.ndarray
    pt: np.ndarray
    p: np.ndarray
    charge: np.ndarray
    ring: np.ndarray
    exp: np.ndarray
    run: np.ndarray
    event: np.ndarray
    cand: np.ndarray
    split: np.ndarray
    event_tracks: np.ndarray
    event_charge: np.ndarray

    def __len__(self) -> int:
        return int(self.pt.size)

    def select(self, mask: np.ndarray) -> "TrackImages":
        """The rows where ``mask`` is true."""
        return TrackImages(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    @staticmethod
    def concatenate(parts: Sequence["TrackImages"]) -> "TrackImages":
        """Rows of several parts, in order."""
        return TrackImages(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(TrackImages)})


def split_of(exp: np.ndarray, run: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Deterministic sample split per event: TRAIN (60 %), VALID (20 %), TEST (20 %)."""
    key = (np.asarray(exp, np.uint64) * np.uint64(1_000_003) + np.asarray(run, np.uint64) * np.uint64(7919)
           + np.asarray(event, np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
    u = (key >> np.uint64(40)) % np.uint64(1000)
    return np.where(u < 600, TRAIN, np.where(u < 800, VALID, TEST)).astype(np.int8)


def ecl_entry(tracks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reaches the barrel, theta ring, phi index) of the helix's first crossing of r = ECL_R."""
    h = np.stack([np.asarray(tracks[k], float) for k in ("d0", "phi0", "omega", "z0", "tanl")], axis=1)
    s = H.cylinder_crossing(h, ECL_R, 1.0)
    ok = np.isfinite(s)
    x = H.position(h, np.where(ok, s, 0.0))
    theta = np.arctan2(np.hypot(x[:, 0], x[:, 1]), x[:, 2])
    phi = np.arctan2(x[:, 1], x[:, 0])
    ok &= (theta > ECL_THETA_MIN) & (theta < ECL_THETA_MAX)
    it = np.floor((theta - ECL_THETA_MIN) / (ECL_THETA_MAX - ECL_THETA_MIN) * ECL_NTHETA).astype(np.int64)
    ip = np.floor(np.mod(phi, 2 * np.pi) / (2 * np.pi) * ECL_NPHI).astype(np.int64) % ECL_NPHI
    return ok, np.clip(it, 0, ECL_NTHETA - 1), ip


def window_images(event: np.ndarray, it: np.ndarray, ip: np.ndarray, hit_event: np.ndarray,
                  hit_crystal: np.ndarray, hit_energy: np.ndarray) -> np.ndarray:
    """(N, 7, 7) energies of the crystals around (it, ip) in each track's event (vectorised lookup)."""
    half = WINDOW // 2
    key_h = np.asarray(hit_event, np.int64) * N_ECL_CRYSTALS + np.asarray(hit_crystal, np.int64)
    order = np.argsort(key_h, kind="stable")
    key_s, e_s = key_h[order], np.asarray(hit_energy, float)[order]
    d = np.arange(-half, half + 1)
    wt = it[:, None, None] + d[None, :, None]
    wp = np.mod(ip[:, None, None] + d[None, None, :], ECL_NPHI)
    wt, wp = np.broadcast_arrays(wt, wp)
    inside = (wt >= 0) & (wt < ECL_NTHETA)
    key = np.asarray(event, np.int64)[:, None, None] * N_ECL_CRYSTALS + np.clip(wt, 0, ECL_NTHETA - 1) * ECL_NPHI + wp
    pos = np.searchsorted(key_s, key)
    posc = np.clip(pos, 0, max(key_s.size - 1, 0))
    found = inside & (pos < key_s.size) & (key_s[posc] == key) if key_s.size else np.zeros(key.shape, bool)
    return np.where(found, e_s[posc] if key_s.size else 0.0, 0.0).astype(np.float32)


def read_track_images(entries: Sequence[tuple[Path, ExpRun]], constants: np.ndarray,
                      max_chi2_ndf: float = 5.0) -> TrackImages:
    """Images of the well-fitted tracks (chi2/ndf below the cut) of cDST files that reach the ECL barrel.

    ``constants``: (6624,) ECL crystal constants (energy = constant * amplitude)."""
    from ..production import read_cdst

    parts = []
    for path, exprun in entries:
        data = read_cdst([path], ("tracks", "ecl_full"))
        trk, hits = data["tracks"], data["ecl_full"]
        if not trk or np.asarray(trk["event"]).size == 0:
            continue
        ndf = np.asarray(trk["ndf"], float)
        good = (ndf > 0) & (np.asarray(trk["chi2"], float) < max_chi2_ndf * np.maximum(ndf, 1))
        ok, it, ip = ecl_entry(trk)
        sel = good & ok
        ev_all = np.asarray(trk["event"], np.int64)
        uniq, inv = np.unique(ev_all, return_inverse=True)
        n_ev = np.bincount(inv, good, minlength=uniq.size)[inv].astype(np.int64)
        q_ev = np.bincount(inv, good * np.sign(np.asarray(trk["charge"], float)), minlength=uniq.size)[inv].astype(np.int64)
        if not sel.any():
            continue
        ev = np.asarray(trk["event"], np.int64)[sel]
        crystal = np.asarray(hits.get("crystal", np.zeros(0)), np.int64)
        energy = constants[crystal] * np.asarray(hits.get("amplitude", np.zeros(0)), float)
        img = window_images(ev, it[sel], ip[sel], np.asarray(hits.get("event", np.zeros(0)), np.int64), crystal, energy)
        tanl = np.asarray(trk["tanl"], float)[sel]
        n = int(sel.sum())
        exp = np.full(n, exprun.exp, np.int64)
        run = np.full(n, exprun.run, np.int64)
        parts.append(TrackImages(image=img, pt=np.asarray(trk["p"], float)[sel] / np.sqrt(1 + tanl ** 2),
                                 p=np.asarray(trk["p"], float)[sel], charge=np.sign(np.asarray(trk["charge"])[sel]).astype(np.int8),
                                 ring=it[sel].astype(np.int64), exp=exp, run=run, event=ev,
                                 cand=np.asarray(trk["cand"], np.int64)[sel], split=split_of(exp, run, ev), event_tracks=n_ev[sel],
                                 event_charge=q_ev[sel]))
    if not parts:
        empty = np.zeros(0)
        return TrackImages(np.zeros((0, WINDOW, WINDOW), np.float32), empty, empty, np.zeros(0, np.int8),
                           np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return TrackImages.concatenate(parts)


def select_dimuons(t: TrackImages) -> TrackImages:
    """Muon candidates without truth: tracks of events with exactly two well-fitted tracks of opposite charge."""
    return t.select((t.event_tracks == 2) & (t.event_charge == 0))


def threshold(image: np.ndarray, thr: "float | np.ndarray") -> np.ndarray:
    """Zero the pixels below the energy threshold (scalar or one per image)."""
    thr = np.asarray(thr, np.float32)
    if thr.ndim == 1:
        thr = thr[:, None, None]
    return np.where(image >= thr, image, np.float32(0)).astype(np.float32)


def e_over_p(image: np.ndarray, p: np.ndarray) -> np.ndarray:
    """E/p baseline: energy of the 3x3 crystals around the entry crystal over the track momentum."""
    c = WINDOW // 2
    return image[:, c - 1:c + 2, c - 1:c + 2].sum(axis=(1, 2)) / np.asarray(p, float)
