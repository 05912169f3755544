"""PXD beam-background generator for random-trigger events (issue 16): the "full simulation" a
background GAN learns from, written as the raw tree ``pxd_bkg`` of ``random_calib`` samples.

Toy model of the PXD beam background (Touschek, beam-gas and two-photon electrons/photons) on the
toy 50 x 150 pixel matrix (u x v, pixel id ``iv * 50 + iu``):

* clusters per sensor and event: Poisson, mean set by ``OCCUPANCY`` (1 % of the pixels fire on
  average) and the mean cluster size, scaled per layer (inner layer 1.6x the outer) and along the
  sensor (intensity ``1 + 0.8 * |v|`` with v in [-1, 1] from the sensor centre: more at the edges);
* shapes: 70 % compact clusters from photons/slow electrons (a 2D Gaussian charge cloud, width
  U(0.3, 0.8) pixels, centred at a random sub-pixel position) and 30 % short tracks of curling
  electrons (a straight segment of Exp(3 pixels) length at a random angle with charge shared along it);
* charge: Gamma(3, 15) ADC per cluster, shared over its pixels; a pixel fires above 5 ADC.

Drawn from its own random stream after everything else of the sample, so the existing trees
(``pxd_digits`` that PXDHotDeadPixels reads) are unchanged.  Returns one row per fired pixel.
"""

from __future__ import annotations

import numpy as np

from ..reco.geometry import PXD_NU, PXD_NV, Geometry

OCCUPANCY = 0.01
COMPACT_FRACTION = 0.7
ADC_THRESHOLD = 5.0
LAYER_SCALE = {1: 1.25, 2: 0.78}  # relative intensity of layers 1 and 2 (ratio 1.6, mean about 1)
MEAN_PIXELS_PER_CLUSTER = 3.0  # used to set the cluster rate; measured occupancy checked in the tests
STEPS = 12


def _v_weight(iv: np.ndarray) -> np.ndarray:
    vc = (iv + 0.5) / PXD_NV * 2 - 1
    return 1 + 0.8 * np.abs(vc)


def pxd_background(rng: np.random.Generator, n_events: int, geom: Geometry,
                   sensors: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Background pixels ``{"event" (0-based), "sensor" (VxdID), "pixel", "adc"}`` sorted by
    (event, sensor, pixel) for ``n_events`` random-trigger events.  ``sensors`` (events x PXD sensors in
    geometry order, bool): only the pixels of these (event, sensor) pairs are made, from the same random
    draws, so they are exactly the full simulation's pixels there (an overlay needs only the hit sensors)."""
    pxd = np.flatnonzero(geom.is_pxd)
    layer = geom.layer[pxd]
    scale = np.array([LAYER_SCALE[int(x)] for x in layer])
    per_sensor = OCCUPANCY * PXD_NU * PXD_NV / MEAN_PIXELS_PER_CLUSTER * scale
    counts = rng.poisson(np.broadcast_to(per_sensor, (n_events, pxd.size)))
    ev = np.repeat(np.repeat(np.arange(n_events), pxd.size), counts.reshape(-1))
    sens = np.repeat(np.tile(pxd, n_events), counts.reshape(-1))
    n = ev.size
    # position: u uniform, v from the edge-enhanced profile (rejection sampling, vectorised)
    u = rng.uniform(0, PXD_NU, n)
    v = np.empty(n)
    todo = np.arange(n)
    while todo.size:
        cand = rng.uniform(0, PXD_NV, todo.size)
        ok = rng.uniform(0, 1.8, todo.size) < _v_weight(np.floor(cand))
        v[todo[ok]] = cand[ok]
        todo = todo[~ok]
    compact = rng.random(n) < COMPACT_FRACTION
    width = rng.uniform(0.3, 0.8, n)
    length = rng.exponential(3.0, n)
    angle = rng.uniform(0, np.pi, n)
    charge = rng.gamma(3.0, 15.0, n)
    gauss = rng.standard_normal((n, STEPS, 2))
    if sensors is not None:
        pos = np.repeat(np.tile(np.arange(pxd.size), n_events), counts.reshape(-1))
        sel = np.asarray(sensors, bool)[ev, pos]
        ev, sens, u, v, compact, width, length, angle, charge, gauss = (
            a[sel] for a in (ev, sens, u, v, compact, width, length, angle, charge, gauss))
        n = ev.size
    # charge deposition points: compact clusters get Gaussian points, tracks points along the segment
    t = (np.arange(STEPS) + 0.5) / STEPS - 0.5
    pu = np.where(compact[:, None], u[:, None] + gauss[:, :, 0] * width[:, None],
                  u[:, None] + t[None, :] * length[:, None] * np.cos(angle)[:, None] + 0.2 * gauss[:, :, 0])
    pv = np.where(compact[:, None], v[:, None] + gauss[:, :, 1] * width[:, None],
                  v[:, None] + t[None, :] * length[:, None] * np.sin(angle)[:, None] + 0.2 * gauss[:, :, 1])
    iu, iv = np.floor(pu).astype(np.int64), np.floor(pv).astype(np.int64)
    inside = (iu >= 0) & (iu < PXD_NU) & (iv >= 0) & (iv < PXD_NV)
    cl = np.repeat(np.arange(n), STEPS).reshape(n, STEPS)
    q = np.broadcast_to((charge / STEPS)[:, None], (n, STEPS))
    key = (ev[cl] * geom.n_sensors + sens[cl]) * (PXD_NU * PXD_NV) + iv * PXD_NU + iu
    uniq, inv = np.unique(key[inside], return_inverse=True)
    adc = np.bincount(inv, q[inside], minlength=uniq.size)
    fired = adc > ADC_THRESHOLD
    uniq, adc = uniq[fired], adc[fired]
    rest, pixel = np.divmod(uniq, PXD_NU * PXD_NV)
    event, sensor_index = np.divmod(rest, geom.n_sensors)
    return {"event": event, "sensor": geom.sensor_id[sensor_index].astype(np.int32), "pixel": pixel.astype(np.int32),
            "adc": adc.astype(np.float32)}
