"""Calibration constants and raw hits -> measurements with errors.

:func:`load_constants` reads the payloads (names and keys as documented in :mod:`b2luca.sim.truth`)
from a :class:`b2luca.conditions.DatabaseChain`; payloads missing from the chain fall back to the
nominal defaults.  :func:`build_measurements` turns raw tracking hits into 1D measurement rows:

* a VXD cluster gives two rows, ``kind`` 0 (local u) and 1 (local v): measured value = the cluster
  coordinate in the sensor's own frame, predicted value = the track's intersection with the sensor
  *as placed by the alignment constants*, in that sensor's frame;
* a CDC hit gives one row, ``kind`` 2: measured value = ``lr * v_drift * (tdc - t0[board])``,
  predicted value = :func:`b2luca.reco.geometry.cdc_drift_distance` of the track's crossing with the
  layer radius, with the CDC layer alignment applied.

PXD clusters on masked pixels (``PXDMasks.status != 0``) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from . import geometry as G
from .geometry import Geometry, nominal_geometry

KIND_U, KIND_V, KIND_CDC = 0, 1, 2
PAYLOAD_NAMES = ("VXDAlignment", "CDCAlignment", "CDCTimeZeros", "SVDTimeOffsets", "ECLCrystalEnergy", "BeamSpot",
                 "PXDMasks")


@dataclass
class Constants:
    """Calibration constants in dense arrays indexed like the nominal geometry."""

    vxd_params: np.ndarray  # (212, 6)
    cdc_params: np.ndarray  # (56, 3)
    cdc_t0: np.ndarray  # (292,)
    svd_offset: np.ndarray  # (172,) in SVD sensor order
    ecl_constant: np.ndarray  # (6624,)
    beam_position: np.ndarray  # (3,)
    beam_size: np.ndarray  # (3, 3) covariance
    pxd_status: np.ndarray  # (40, 7500) uint8
    sources: dict[str, str] = field(default_factory=dict)  # payload name -> where it came from

    @classmethod
    def nominal(cls, geom: Geometry | None = None) -> "Constants":
        """Nominal constants (zero alignment and offsets, unit ECL constants, nominal beam spot, no masks)."""
        geom = geom or nominal_geometry()
        return cls(np.zeros((geom.n_sensors, 6)), np.zeros((geom.n_cdc_layers, 3)), np.zeros(geom.n_cdc_boards),
                   np.zeros(int((~geom.is_pxd).sum())), np.ones(G.N_ECL_CRYSTALS), np.zeros(3),
                   np.diag(G.NOMINAL_BEAMSPOT_SIZE ** 2),
                   np.zeros((int(geom.is_pxd.sum()), G.PXD_NU * G.PXD_NV), np.uint8),
                   {n: "nominal default" for n in PAYLOAD_NAMES})

    @classmethod
    def from_payloads(cls, payloads: Mapping[str, Mapping[str, np.ndarray]], geom: Geometry | None = None) -> "Constants":
        """Build from ``{payload name: arrays}``; names not given keep nominal values.  Id arrays
        (sensor_id, layer, board, crystal) select which entries are set, so partial payloads work."""
        geom = geom or nominal_geometry()
        c = cls.nominal(geom)

        def get(name: str, key: str, shape_tail: tuple = ()) -> np.ndarray:
            data = payloads[name]
            if key not in data:
                raise KeyError(f"payload {name}: array {key!r} is missing (has {sorted(data)})")
            a = np.asarray(data[key])
            if a.shape[1:] != shape_tail:
                raise ValueError(f"payload {name}: array {key!r} has shape {a.shape}, expected (N, *{shape_tail})")
            return a

        def ids(name: str, key: str, n: int) -> np.ndarray:
            i = np.asarray(get(name, key)).astype(np.int64)
            if np.any((i < 0) | (i >= n)):
                raise ValueError(f"payload {name}: {key} out of range 0..{n - 1}")
            return i

        if "VXDAlignment" in payloads:
            idx = geom.sensor_index(get("VXDAlignment", "sensor_id"))
            c.vxd_params[idx] = get("VXDAlignment", "params", (6,))
        if "CDCAlignment" in payloads:
            c.cdc_params[ids("CDCAlignment", "layer", geom.n_cdc_layers)] = get("CDCAlignment", "params", (3,))
        if "CDCTimeZeros" in payloads:
            c.cdc_t0[ids("CDCTimeZeros", "board", geom.n_cdc_boards)] = get("CDCTimeZeros", "t0")
        if "SVDTimeOffsets" in payloads:
            idx = geom.sensor_index(get("SVDTimeOffsets", "sensor_id")) - int(geom.is_pxd.sum())
            if np.any(idx < 0):
                raise ValueError("payload SVDTimeOffsets: sensor_id contains PXD sensors")
            c.svd_offset[idx] = get("SVDTimeOffsets", "offset")
        if "ECLCrystalEnergy" in payloads:
            c.ecl_constant[ids("ECLCrystalEnergy", "crystal", G.N_ECL_CRYSTALS)] = get("ECLCrystalEnergy", "constant")
        if "BeamSpot" in payloads:
            c.beam_position = np.asarray(payloads["BeamSpot"]["position"], float).reshape(3)
            c.beam_size = np.asarray(payloads["BeamSpot"]["size"], float).reshape(3, 3)
        if "PXDMasks" in payloads:
            idx = geom.sensor_index(get("PXDMasks", "sensor_id"))
            if np.any(idx >= c.pxd_status.shape[0]):
                raise ValueError("payload PXDMasks: sensor_id contains SVD sensors")
            c.pxd_status[idx] = get("PXDMasks", "status", (G.PXD_NU * G.PXD_NV,))
        for name in payloads:
            c.sources[name] = "given"
        return c


def load_constants(chain, exprun, geom: Geometry | None = None, names: "tuple[str, ...]" = PAYLOAD_NAMES) -> Constants:
    """Constants for run ``exprun`` from a DatabaseChain (first match wins); absent payloads -> nominal.

    ``names``: the payloads to look up (default all); the others stay nominal, and are not read."""
    payloads, sources = {}, {}
    for name in names:
        entry = chain.lookup(name, exprun)
        if entry is not None:
            payloads[name] = chain.read(name, exprun)
            sources[name] = str(entry.path)
    c = Constants.from_payloads(payloads, geom)
    c.sources.update(sources)
    return c


def vxd_global_derivatives(u: np.ndarray, v: np.ndarray, tu: np.ndarray, tv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d(predicted u)/d(a) and d(predicted v)/d(a), each (N, 6), for the rigid-body sensor parameters
    a = (du, dv, dw, alpha, beta, gamma) at a = 0; (u, v) = predicted local position, (tu, tv) = local
    track slopes du/dw, dv/dw.  (The residual derivative is the negative.)"""
    z, o = np.zeros_like(u), np.ones_like(u)
    gu = np.stack([-o, z, tu, tu * v, -tu * u, v], axis=1)
    gv = np.stack([z, -o, tv, tv * v, -tv * u, -u], axis=1)
    return gu, gv


def cdc_global_derivatives(x: np.ndarray, layer: np.ndarray, wire: np.ndarray, geom: Geometry,
                           cdc_params: np.ndarray) -> np.ndarray:
    """d(predicted drift distance)/d(dx, dy, dphi) of the layer, (N, 3), at points x (N, 3)."""
    par = cdc_params[layer]
    phi_w = (geom.cdc_phi_offset[layer] + x[:, 2] * geom.cdc_stereo[layer] / geom.cdc_r[layer]
             + 2 * np.pi * wire / geom.cdc_nwires[layer] + par[:, 2])
    dx, dy = x[:, 0] - par[:, 0], x[:, 1] - par[:, 1]
    return np.stack([np.sin(phi_w), -np.cos(phi_w), -(dx * np.cos(phi_w) + dy * np.sin(phi_w))], axis=1)


@dataclass
class Measurements:
    """1D measurement rows of track candidates, sorted by track."""

    track_key: np.ndarray  # (T, 2) int64: (gevent, cand)
    track: np.ndarray  # (R,) index into track_key
    kind: np.ndarray  # (R,) 0 VXD u, 1 VXD v, 2 CDC
    sensor: np.ndarray  # (R,) internal VXD sensor index (-1 for CDC)
    layer: np.ndarray  # (R,) CDC layer (-1 for VXD)
    wire: np.ndarray  # (R,) CDC wire (-1 for VXD)
    m: np.ndarray  # (R,) measured value (mm)
    sigma: np.ndarray  # (R,) its error (mm)
    hit: np.ndarray  # (R,) row of the source hit in its raw tree (pxd/svd/cdc by ``det``)
    det: np.ndarray  # (R,) 0 pxd, 1 svd, 2 cdc
    approx_pos: np.ndarray  # (R, 3) approximate global hit position (seeding)

    @property
    def n_tracks(self) -> int:
        return int(self.track_key.shape[0])


def build_measurements(raw: Mapping[str, Mapping[str, np.ndarray]], constants: Constants,
                       geom: Geometry | None = None, detectors: tuple[str, ...] = ("pxd", "svd", "cdc"),
                       min_rows: int = 10) -> Measurements:
    """Raw hits (from :func:`b2luca.reco.raw.read_raw`) -> measurement rows with calibrated values.

    Track candidates with fewer than ``min_rows`` rows are dropped.
    """
    geom = geom or nominal_geometry()
    centers, rots = G.aligned_frames(geom, constants.vxd_params)
    parts = []
    for di, det in enumerate(("pxd", "svd")):
        if det not in detectors or det not in raw:
            continue
        h = raw[det]
        sidx = geom.sensor_index(h["sensor"])
        keep = np.ones(sidx.size, bool)
        if det == "pxd":
            keep = constants.pxd_status[sidx, np.asarray(h["pixel"], np.int64)] == 0
        rows = np.flatnonzero(keep)
        s = sidx[rows]
        u, v = np.asarray(h["u"], float)[rows], np.asarray(h["v"], float)[rows]
        pos = centers[s] + rots[s][:, :, 0] * u[:, None] + rots[s][:, :, 1] * v[:, None]
        for kind, val, sig in ((KIND_U, u, geom.sigma_u[s]), (KIND_V, v, geom.sigma_v[s])):
            parts.append(dict(gevent=h["gevent"][rows], cand=h["cand"][rows], kind=np.full(rows.size, kind),
                              sensor=s, layer=np.full(rows.size, -1), wire=np.full(rows.size, -1), m=val, sigma=sig,
                              hit=rows, det=np.full(rows.size, di), pos=pos))
    if "cdc" in detectors and "cdc" in raw:
        h = raw["cdc"]
        lay, wire = np.asarray(h["layer"], np.int64), np.asarray(h["wire"], np.int64)
        board = geom.cdc_board(lay, wire)
        m = h["lr"] * G.CDC_DRIFT_VELOCITY * (np.asarray(h["tdc"], float) - constants.cdc_t0[board])
        par = constants.cdc_params[lay]
        phi_w = geom.cdc_phi_offset[lay] + 2 * np.pi * wire / geom.cdc_nwires[lay] + par[:, 2]
        r = geom.cdc_r[lay]
        pos = np.stack([r * np.cos(phi_w) - m * np.sin(phi_w) + par[:, 0],
                        r * np.sin(phi_w) + m * np.cos(phi_w) + par[:, 1], np.zeros_like(r)], 1)
        n = lay.size
        parts.append(dict(gevent=h["gevent"], cand=h["cand"], kind=np.full(n, KIND_CDC), sensor=np.full(n, -1),
                          layer=lay, wire=wire, m=m, sigma=np.full(n, G.CDC_SIGMA), hit=np.arange(n),
                          det=np.full(n, 2), pos=pos))
    if not parts:
        raise ValueError("build_measurements: no tracking hits in the raw data")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    key = cat["gevent"].astype(np.int64) * 65536 + cat["cand"].astype(np.int64)
    ok = cat["cand"] >= 0
    uniq, inv, counts = np.unique(key[ok], return_inverse=True, return_counts=True)
    good = counts >= min_rows
    remap = np.cumsum(good) - 1
    sel = np.flatnonzero(ok)[good[inv]]
    track = remap[inv[good[inv]]]
    order = np.lexsort((cat["kind"][sel], track))
    sel, track = sel[order], track[order]
    tk = uniq[good]
    return Measurements(track_key=np.stack([tk // 65536, tk % 65536], 1), track=track,
                        kind=cat["kind"][sel].astype(np.int8), sensor=cat["sensor"][sel].astype(np.int64),
                        layer=cat["layer"][sel].astype(np.int64), wire=cat["wire"][sel].astype(np.int64),
                        m=cat["m"][sel].astype(float), sigma=cat["sigma"][sel].astype(float),
                        hit=cat["hit"][sel].astype(np.int64), det=cat["det"][sel].astype(np.int8),
                        approx_pos=cat["pos"][sel])


def ecl_energy(raw_ecl: Mapping[str, np.ndarray], constants: Constants) -> np.ndarray:
    """Calibrated crystal energies [GeV] = ECLCrystalEnergy.constant * amplitude."""
    return constants.ecl_constant[np.asarray(raw_ecl["crystal"], np.int64)] * np.asarray(raw_ecl["amplitude"], float)


def svd_time(raw_svd: Mapping[str, np.ndarray], constants: Constants, geom: Geometry | None = None) -> np.ndarray:
    """SVD hit times corrected by SVDTimeOffsets [ns] (0 for a perfect calibration, event time is 0)."""
    geom = geom or nominal_geometry()
    idx = geom.sensor_index(raw_svd["sensor"]) - int(geom.is_pxd.sum())
    return np.asarray(raw_svd["time"], float) - constants.svd_offset[idx]


def cdc_drift_time(raw_cdc: Mapping[str, np.ndarray], constants: Constants) -> np.ndarray:
    """CDC drift times [ns] = tdc - CDCTimeZeros.t0[board]."""
    return np.asarray(raw_cdc["tdc"], float) - constants.cdc_t0[np.asarray(raw_cdc["board"], np.int64)]
