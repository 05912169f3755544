"""Overlay of PXD beam background on the PXD hits of tracking events (issue 16; numpy only).

Background pixels (the ``pxd_background`` toy "full simulation", pixels from a GAN payload, or none)
are placed into the same events as the tracks.  A fired background pixel inside the ``window`` x
``window`` pixels around a track's PXD cluster is picked up by the cluster (as a real clusteriser
merges touching pixels and the hit association takes the merged cluster): the hit's (u, v) becomes
the charge-weighted mean of the track cluster (its charge at its position) and the background pixels
(their ADC at the pixel centres), and its charge the sum.  The fit does not know, so background
biases the PXD positions and widens the impact-parameter pulls, most for tracks whose PXD hits matter.

This is additive: without background (mode ``none``, the default everywhere) no array changes.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ..reco.geometry import PXD_NU, PXD_NV, Geometry
from .pxd_background import pxd_background

BACKGROUND_MODES = ("none", "simulated", "gan")
PICKUP_WINDOW = 5  # pixels (odd): the neighbourhood of a track cluster that merges background pixels

#: a background source: (rng, n_events, geometry, hits=PXD hits or None) -> {"event" (0-based), "sensor"
#: (VxdID), "pixel", "adc"}; with ``hits`` it may fill only the neighbourhood of the hits (a GAN saves time)
BackgroundSource = Callable[..., Mapping[str, np.ndarray]]


def pixel_centre(geom: Geometry, sensor_index: np.ndarray, pixel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local (u, v) [mm] of the centres of toy pixels ``iv * PXD_NU + iu`` on PXD sensors."""
    iv, iu = np.divmod(np.asarray(pixel, np.int64), PXD_NU)
    hu, hv = geom.half_u[sensor_index], geom.half_v[sensor_index]
    return (iu + 0.5) / PXD_NU * 2 * hu - hu, (iv + 0.5) / PXD_NV * 2 * hv - hv


def overlay_pxd_hits(pxd: Mapping[str, np.ndarray], background: Mapping[str, np.ndarray], geom: Geometry,
                     window: int = PICKUP_WINDOW) -> dict[str, np.ndarray]:
    """PXD hit columns with the background pixels around each hit merged into it (see the module doc).

    ``pxd``: raw PXD hits (``event``, ``sensor``, ``u``, ``v``, ``charge``, ...); ``background``: fired
    pixels with ``event`` in the same numbering, ``sensor``, ``pixel``, ``adc``.  Returns a copy with
    ``u``, ``v``, ``charge`` updated; every other column (``pixel`` included) is unchanged."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"overlay window must be a positive odd number of pixels, got {window}")
    out = {k: np.array(v, copy=True) for k, v in pxd.items()}
    if out["event"].size == 0 or np.asarray(background["event"]).size == 0:
        return out
    n_pix = PXD_NU * PXD_NV
    b_sidx = geom.sensor_index(np.asarray(background["sensor"]))
    b_key = (np.asarray(background["event"], np.int64) * geom.n_sensors + b_sidx) * n_pix + np.asarray(
        background["pixel"], np.int64)
    order = np.argsort(b_key, kind="stable")
    b_key, b_adc = b_key[order], np.asarray(background["adc"], float)[order]
    b_u, b_v = pixel_centre(geom, b_sidx[order], np.asarray(background["pixel"], np.int64)[order])
    sidx = geom.sensor_index(np.asarray(out["sensor"]))
    u, v = np.asarray(out["u"], float), np.asarray(out["v"], float)
    pix = geom.pxd_pixel(sidx, u, v)
    iv, iu = np.divmod(pix, PXD_NU)
    half = window // 2
    d = np.arange(-half, half + 1)
    nu, nv = iu[:, None, None] + d[None, None, :], iv[:, None, None] + d[None, :, None]
    inside = (nu >= 0) & (nu < PXD_NU) & (nv >= 0) & (nv < PXD_NV)
    key = ((np.asarray(out["event"], np.int64) * geom.n_sensors + sidx)[:, None, None] * n_pix
           + np.clip(nv, 0, PXD_NV - 1) * PXD_NU + np.clip(nu, 0, PXD_NU - 1))
    pos = np.clip(np.searchsorted(b_key, key), 0, b_key.size - 1)
    found = inside & (b_key[pos] == key)
    q_bkg = np.where(found, b_adc[pos], 0.0).reshape(len(u), -1)
    qb_sum = q_bkg.sum(axis=1)
    q = np.asarray(out["charge"], float)
    total = q + qb_sum
    hit = qb_sum > 0  # hits without background nearby keep their values bit for bit
    mu = (q * u + (q_bkg * b_u[pos].reshape(len(u), -1)).sum(axis=1)) / total
    mv = (q * v + (q_bkg * b_v[pos].reshape(len(u), -1)).sum(axis=1)) / total
    out["u"] = np.where(hit, mu, u).astype(out["u"].dtype)
    out["v"] = np.where(hit, mv, v).astype(out["v"].dtype)
    out["charge"] = np.where(hit, total, q).astype(out["charge"].dtype)
    return out


def background_for_events(mode: str, rng: np.random.Generator, n_events: int, geom: Geometry,
                          generator: BackgroundSource | None = None,
                          hits: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray] | None:
    """Background pixels of ``n_events`` events (0-based) for ``mode``: ``none`` -> None, ``simulated``
    -> the toy full simulation (:func:`pxd_background`), ``gan`` -> ``generator`` (a GAN payload; given
    the PXD ``hits`` with 0-based events, it may fill only the pick-up neighbourhood of the hits; the
    simulation then makes only the hits' sensors, the same pixels there as without ``hits``)."""
    if mode not in BACKGROUND_MODES:
        raise ValueError(f"PXD background mode must be one of {', '.join(BACKGROUND_MODES)}, got {mode!r}")
    if mode == "none":
        return None
    if mode == "simulated":
        if hits is None:
            return pxd_background(rng, n_events, geom)
        pxd = np.flatnonzero(geom.is_pxd)  # only the hits' sensors can pick background up
        on = np.zeros((n_events, pxd.size), bool)
        on[np.asarray(hits["event"], np.int64), np.searchsorted(pxd, geom.sensor_index(np.asarray(hits["sensor"])))] = True
        return pxd_background(rng, n_events, geom, sensors=on)
    if generator is None:
        raise ValueError("PXD background mode 'gan' needs a generator (the PXDBackgroundGAN payload)")
    return {k: np.asarray(v) for k, v in generator(rng, n_events, geom, hits=hits).items()}


__all__ = ["BACKGROUND_MODES", "BackgroundSource", "PICKUP_WINDOW", "background_for_events", "overlay_pxd_hits",
           "pixel_centre"]
