"""Event generators and the detector response of the toy detector (vectorised numpy).

Simplifications (deliberate; correctness over realism):

* Tracks are helices in a uniform 1.5 T field; no energy loss.  Collision tracks are followed on their
  outgoing arm only, up to the first half turn (curlers do not come back).  Cosmics are one helix
  through both hemispheres: the arm ``s < 0`` (top) and ``s > 0`` (bottom) of the perigee helix.
* Multiple scattering: a Gaussian kink (Highland width, two projections) at the beam pipe, at each VXD
  layer radius and at the CDC inner wall, applied on cylinders (not on the exact sensor planes).
  Because MS is a random walk, kinks accumulate outwards from the perigee on both arms of a cosmic.
  No scattering in the CDC gas.
* VXD hits are 2D clusters (u, v) in the actual (misaligned) sensor frame, Gaussian resolution per layer;
  a track can hit two overlapping sensors of a layer.  PXD hits on dead pixels are lost.
* CDC: one hit per layer crossed; the measured quantity is the drift distance from the nearest wire,
  defined as ``rho * sin(phi_track - phi_wire(z))`` in the layer's (misaligned) frame at the crossing of
  the nominal layer radius; Gaussian resolution; linear x-t relation; left/right sign given by the
  idealised track finder.  ``tdc = |d| / v_drift + t0[board]``.
* ECL: 3x3 crystal showers (electrons deposit 96 % of their energy, pions a uniform 10-70 %, muons a
  0.2 GeV MIP in one crystal); amplitude = gain * deposit + 1 MeV noise.
* Event time is 0 for every event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..reco import geometry as G
from ..reco import helix as H
from ..reco.geometry import (BEAMPIPE_R, BEAMPIPE_X0, BOOST_BETAGAMMA, C_B, CDC_DRIFT_VELOCITY, CDC_INNER_WALL_R,
                             CDC_INNER_WALL_X0, CDC_SIGMA, ECL_NPHI, ECL_NTHETA, ECL_R, ECL_THETA_MAX, ECL_THETA_MIN,
                             PXD_NU, PXD_NV, SQRT_S, Geometry)
from .truth import Truth

KIND_MU, KIND_E, KIND_PI = 0, 1, 2
MASS = np.array([0.1056584, 0.000511, 0.1395704])
SVD_TIME_SIGMA = 3.0  # ns
ECL_NOISE = 0.001  # GeV
ECL_CONTAINMENT = 0.96
PXD_RANDOM_OCCUPANCY = 0.03
PXD_HOT_FIRE_PROB = 0.5
THETA_ACC = (np.deg2rad(17.0), np.deg2rad(150.0))


@dataclass
class Tracks:
    """Generated tracks: event index, perigee params at generation, momentum, particle kind, #arms."""

    event: np.ndarray
    h: np.ndarray
    p: np.ndarray
    kind: np.ndarray
    cosmic: bool

    def __len__(self) -> int:
        return int(self.event.size)


def _from_momentum(vertex: np.ndarray, pvec: np.ndarray, charge: np.ndarray) -> np.ndarray:
    pt = np.hypot(pvec[:, 0], pvec[:, 1])
    h, _ = H.from_point(vertex, np.arctan2(pvec[:, 1], pvec[:, 0]), pvec[:, 2] / pt, charge * C_B / pt)
    return h


def _beam_vertex(rng: np.random.Generator, n: int, truth: Truth) -> np.ndarray:
    return truth.beam_position + rng.standard_normal((n, 3)) * truth.beam_size


def gen_pairs(rng: np.random.Generator, n_events: int, truth: Truth, kind: int) -> Tracks:
    """Back-to-back pairs (mu+mu- or e+e-) at sqrt(s), boosted along z, both tracks in the acceptance
    (mumu: 17-150 deg; bhabha: the ECL barrel)."""
    m = MASS[kind]
    lo, hi = (ECL_THETA_MIN, ECL_THETA_MAX) if kind == KIND_E else THETA_ACC
    gamma = np.sqrt(1 + BOOST_BETAGAMMA ** 2)
    out = []
    need = n_events
    while need > 0:
        k = 3 * need + 16
        cth, ph = rng.uniform(-1, 1, k), rng.uniform(-np.pi, np.pi, k)
        e = SQRT_S / 2
        ps = np.sqrt(e * e - m * m)
        sth = np.sqrt(1 - cth ** 2)
        p1 = ps * np.stack([sth * np.cos(ph), sth * np.sin(ph), cth], 1)
        mom = []
        for sign in (1.0, -1.0):
            q = sign * p1
            pz = gamma * q[:, 2] + BOOST_BETAGAMMA * e
            mom.append(np.stack([q[:, 0], q[:, 1], pz], 1))
        th = [np.arctan2(np.hypot(v[:, 0], v[:, 1]), v[:, 2]) for v in mom]
        ok = (th[0] > lo) & (th[0] < hi) & (th[1] > lo) & (th[1] < hi)
        ok &= rng.random(k) < 0.5 * (1 + cth ** 2) if kind == KIND_MU else ok
        sel = np.flatnonzero(ok)[:need]
        out.append((mom[0][sel], mom[1][sel]))
        need -= sel.size
    p_a = np.concatenate([o[0] for o in out])
    p_b = np.concatenate([o[1] for o in out])
    vtx = _beam_vertex(rng, n_events, truth)
    charge_a = np.where(rng.random(n_events) < 0.5, 1.0, -1.0)
    pvec = np.stack([p_a, p_b], 1).reshape(-1, 3)
    vertex = np.repeat(vtx, 2, axis=0)
    charge = np.stack([charge_a, -charge_a], 1).reshape(-1)
    event = np.repeat(np.arange(n_events), 2)
    return Tracks(event, _from_momentum(vertex, pvec, charge), np.linalg.norm(pvec, axis=1),
                  np.full(event.size, kind, np.int8), False)


def gen_hadron(rng: np.random.Generator, n_events: int, truth: Truth) -> Tracks:
    """Hadronic events: 2 + Poisson(4) charged pions, pT = 0.1 GeV + Exp(0.35 GeV), cos(theta) flat in [-0.85, 0.95]."""
    ntrk = 2 + rng.poisson(4.0, n_events)
    event = np.repeat(np.arange(n_events), ntrk)
    n = event.size
    vtx = _beam_vertex(rng, n_events, truth)[event]
    pt = 0.1 + rng.exponential(0.35, n)
    cth = rng.uniform(-0.85, 0.95, n)
    ph = rng.uniform(-np.pi, np.pi, n)
    pz = pt * cth / np.sqrt(1 - cth ** 2)
    pvec = np.stack([pt * np.cos(ph), pt * np.sin(ph), pz], 1)
    charge = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return Tracks(event, _from_momentum(vtx, pvec, charge), np.linalg.norm(pvec, axis=1),
                  np.full(n, KIND_PI, np.int8), False)


def gen_cosmic(rng: np.random.Generator, n_events: int) -> Tracks:
    """Cosmic muons from above (-y direction), cos^2 zenith distribution, p = 2 GeV + Exp(8 GeV),
    passing within |d0| < 25 mm and -200 < z0 < 300 mm of the IP (so that they cross the VXD)."""
    n = n_events
    lo = 0.45  # density ~ cos^2(zenith) on [0.45, 1]
    cz = (lo ** 3 + rng.random(n) * (1 - lo ** 3)) ** (1 / 3)
    sz = np.sqrt(1 - cz ** 2)
    az = rng.uniform(-np.pi, np.pi, n)
    d = np.stack([sz * np.cos(az), -cz, sz * np.sin(az)], 1)  # downward
    p = 2.0 + rng.exponential(8.0, n)
    pt = p * np.hypot(d[:, 0], d[:, 1])
    charge = np.where(rng.random(n) < 0.55, 1.0, -1.0)
    h = np.stack([rng.uniform(-25, 25, n), np.arctan2(d[:, 1], d[:, 0]), charge * C_B / pt,
                  rng.uniform(-200, 300, n), d[:, 2] / np.hypot(d[:, 0], d[:, 1])], 1)
    return Tracks(np.arange(n), h, p, np.full(n, KIND_MU, np.int8), True)


# --- detector response -----------------------------------------------------------------------------
def _kink(rng: np.random.Generator, h: np.ndarray, alive: np.ndarray, r: float, x0: float, p: np.ndarray,
          mass: np.ndarray, arm: float) -> tuple[np.ndarray, np.ndarray]:
    """Multiple-scattering kink where the helix crosses the cylinder ``r``; returns (new h, alive)."""
    s = H.cylinder_crossing(h, r, arm)
    ok = alive & np.isfinite(s)  # tracks that do not cross r (|d0| > r or curling) are not scattered here
    g = rng.standard_normal((2, h.shape[0]))
    if x0 <= 0:
        return h, alive
    s0 = np.where(ok, s, 0.0)
    theta0 = H.scatter_sigma(h, s0, x0, p, mass)
    hn = H.apply_kink(h, s0, g[0] * theta0, g[1] * theta0)
    return np.where(ok[:, None], hn, h), alive


def _vxd_layer(h: np.ndarray, alive: np.ndarray, arm: float, li: int, geom: Geometry, centers: np.ndarray,
               rots: np.ndarray) -> dict[str, np.ndarray]:
    """Intersections of the helices with the (actual) sensors of VXD layer ``li`` (0-based)."""
    r = geom.layer_r[li]
    nlad, nsen, first = int(geom.layer_nladders[li]), int(geom.layer_nsensors[li]), int(geom.layer_first[li])
    s_c = H.cylinder_crossing(h, r, arm)
    okc = alive & np.isfinite(s_c)
    s_c = np.where(okc, s_c, 0.0)
    pc = H.position(h, s_c)
    phic = np.arctan2(pc[:, 1], pc[:, 0])
    k0 = np.rint(phic / (2 * np.pi / nlad)).astype(np.int64)
    lad = (k0[:, None] + np.array([-1, 0, 1])) % nlad
    length = 2 * geom.half_v[first]
    j = np.floor((pc[:, 2] - geom.layer_zoffset[li]) / length + nsen / 2).astype(np.int64)
    okz = (j >= 0) & (j < nsen)
    idx = first + lad * nsen + np.clip(j, 0, nsen - 1)[:, None]
    c, rot = centers[idx], rots[idx]
    s = H.plane_crossing(h[:, None, :], s_c[:, None], c, rot[..., :, 2], n_iter=6)
    x = H.position(h[:, None, :], s)
    loc = np.einsum("nkji,nkj->nki", rot, x - c)
    # a far-away ladder's plane may have no nearby crossing: demand a converged Newton solution close
    # to the layer cylinder, inside the sensor
    acc = ((okc & okz)[:, None] & (np.abs(loc[..., 0]) < geom.half_u[idx]) & (np.abs(loc[..., 1]) < geom.half_v[idx])
           & (np.abs(loc[..., 2]) < 1e-6) & (np.abs(s - s_c[:, None]) < r) & (arm * s > 0) & np.isfinite(s))
    trk, cand = np.nonzero(acc)
    return {"track": trk, "sensor_index": idx[trk, cand], "u_true": loc[trk, cand, 0], "v_true": loc[trk, cand, 1],
            "s": s[trk, cand], "h": h[trk]}


def _cdc(h: np.ndarray, alive: np.ndarray, arm: float, geom: Geometry, truth: Truth) -> dict[str, np.ndarray]:
    r = geom.cdc_r[None, :]
    s = H.cylinder_crossing(h[:, None, :], r, arm)
    ok = alive[:, None] & np.isfinite(s)
    trk, lay = np.nonzero(ok)
    hh = h[trk]
    x = H.position(hh, s[trk, lay])
    ok2 = (x[:, 2] > geom.cdc_zmin[lay]) & (x[:, 2] < geom.cdc_zmax[lay])
    trk, lay, x, hh = trk[ok2], lay[ok2], x[ok2], hh[ok2]
    d, wire = G.cdc_drift_distance(x, lay, geom, truth.cdc_params, wire=None)
    return {"track": trk, "layer": lay, "wire": wire, "d_true": d, "h": hh}


def _ecl(h: np.ndarray, alive: np.ndarray, arm: float) -> dict[str, np.ndarray]:
    s = H.cylinder_crossing(h, ECL_R, arm)
    ok = alive & np.isfinite(s)
    trk = np.flatnonzero(ok)
    x = H.position(h[trk], s[trk])
    theta = np.arctan2(np.hypot(x[:, 0], x[:, 1]), x[:, 2])
    phi = np.arctan2(x[:, 1], x[:, 0])
    inside = (theta > ECL_THETA_MIN) & (theta < ECL_THETA_MAX)
    return {"track": trk[inside], "theta": theta[inside], "phi": phi[inside]}


def propagate(tracks: Tracks, geom: Geometry, truth: Truth, rng: np.random.Generator,
              material_scale: float = 1.0) -> dict[str, dict[str, np.ndarray]]:
    """True intersections of all tracks with the actual detector (no smearing yet).

    Returns {"vxd": {...}, "cdc": {...}, "ecl": {...}}; every hit has ``track`` (index into tracks),
    ``arm`` and the true local segment helix ``h`` (truth, for tests).
    """
    centers, rots = truth.sensor_frames(geom)
    mass = MASS[tracks.kind]
    arms = (-1.0, 1.0) if tracks.cosmic else (1.0,)
    parts: dict[str, list] = {"vxd": [], "cdc": [], "ecl": []}
    for arm in arms:
        h = tracks.h.copy()
        alive = np.ones(len(tracks), bool)
        h, alive = _kink(rng, h, alive, BEAMPIPE_R, BEAMPIPE_X0 * material_scale, tracks.p, mass, arm)
        for li in range(6):
            hits = _vxd_layer(h, alive, arm, li, geom, centers, rots)
            hits["arm"] = np.full(hits["track"].size, arm)
            parts["vxd"].append(hits)
            h, alive = _kink(rng, h, alive, G.scatterer_radius(geom, li), geom.layer_x0[li] * material_scale,
                             tracks.p, mass, arm)
        h, alive = _kink(rng, h, alive, CDC_INNER_WALL_R, CDC_INNER_WALL_X0 * material_scale, tracks.p, mass, arm)
        cdc = _cdc(h, alive, arm, geom, truth)
        cdc["arm"] = np.full(cdc["track"].size, arm)
        parts["cdc"].append(cdc)
        ecl = _ecl(h, alive, arm)
        parts["ecl"].append(ecl)
    out = {}
    for key, lst in parts.items():
        merged = {k: np.concatenate([d[k] for d in lst]) for k in lst[0]}
        order = np.argsort(merged["track"], kind="stable")
        out[key] = {k: v[order] for k, v in merged.items()}
    return out


def digitize(tracks: Tracks, true_hits: dict[str, dict[str, np.ndarray]], geom: Geometry, truth: Truth,
             rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Smear and digitise: returns raw hit columns per detector ('pxd', 'svd', 'cdc', 'ecl') with
    ``track`` (index into tracks) and, for tests, the smearing truth under keys starting with ``true_``."""
    v = true_hits["vxd"]
    n = v["track"].size
    idx = v["sensor_index"]
    u = v["u_true"] + rng.standard_normal(n) * geom.sigma_u[idx]
    vv = v["v_true"] + rng.standard_normal(n) * geom.sigma_v[idx]
    charge = rng.gamma(4.0, 12.0, n)
    is_pxd = geom.layer[idx] <= 2
    pix = geom.pxd_pixel(idx, u, vv)
    npxd = int(geom.is_pxd.sum())
    dead = np.zeros(n, bool)
    dead[is_pxd] = truth.pxd_status[idx[is_pxd], pix[is_pxd]] == 2
    svd_index = idx - npxd
    svd_time = np.where(is_pxd, 0.0, truth.svd_offset[np.clip(svd_index, 0, None)]) + rng.normal(0, SVD_TIME_SIGMA, n)
    keep_p, keep_s = is_pxd & ~dead, ~is_pxd
    common = lambda m: {"track": v["track"][m], "sensor": geom.sensor_id[idx[m]], "u": u[m], "v": vv[m],  # noqa: E731
                        "charge": charge[m], "true_u": v["u_true"][m], "true_v": v["v_true"][m],
                        "true_h": v["h"][m], "true_s": v["s"][m], "true_arm": v["arm"][m]}
    pxd = common(keep_p)
    pxd["pixel"] = pix[keep_p]
    svd = common(keep_s)
    svd["time"] = svd_time[keep_s]
    c = true_hits["cdc"]
    nc = c["track"].size
    dmeas = np.abs(c["d_true"]) + rng.standard_normal(nc) * CDC_SIGMA
    board = geom.cdc_board(c["layer"], c["wire"])
    cdc = {"track": c["track"], "layer": c["layer"], "wire": c["wire"], "board": board,
           "tdc": dmeas / CDC_DRIFT_VELOCITY + truth.cdc_t0[board], "adc": rng.gamma(5.0, 20.0, nc),
           "lr": np.where(c["d_true"] >= 0, 1, -1), "true_d": c["d_true"], "true_h": c["h"], "true_arm": c["arm"]}
    ecl = _ecl_showers(tracks, true_hits["ecl"], truth, rng)
    return {"pxd": pxd, "svd": svd, "cdc": cdc, "ecl": ecl}


def _ecl_showers(tracks: Tracks, e: dict[str, np.ndarray], truth: Truth, rng: np.random.Generator) -> dict[str, np.ndarray]:
    trk = e["track"]
    n = trk.size
    kind = tracks.kind[trk]
    p = tracks.p[trk]
    dep = np.where(kind == KIND_E, ECL_CONTAINMENT * p,
                   np.where(kind == KIND_PI, rng.uniform(0.1, 0.7, n) * p, rng.gamma(8.0, 0.2 / 8.0, n)))
    tpitch = (ECL_THETA_MAX - ECL_THETA_MIN) / ECL_NTHETA
    ppitch = 2 * np.pi / ECL_NPHI
    ft = (e["theta"] - ECL_THETA_MIN) / tpitch
    fp = np.mod(e["phi"], 2 * np.pi) / ppitch
    it0, ip0 = np.floor(ft).astype(np.int64), np.floor(fp).astype(np.int64)
    off = np.array([-1, 0, 1])
    it = it0[:, None, None] + off[None, :, None]
    ip = ip0[:, None, None] + off[None, None, :]
    w = np.exp(-0.5 * (((it + 0.5 - ft[:, None, None]) / 0.4) ** 2 + ((ip + 0.5 - fp[:, None, None]) / 0.4) ** 2))
    it, ip = np.broadcast_arrays(it, ip)
    w = np.where((it >= 0) & (it < ECL_NTHETA), w, 0.0)
    mip = kind == KIND_MU
    w[mip] = 0.0
    w[mip, 1, 1] = 1.0
    w = w / w.sum(axis=(1, 2), keepdims=True)
    crystal = (np.clip(it, 0, ECL_NTHETA - 1) * ECL_NPHI + np.mod(ip, ECL_NPHI)).reshape(n, 9)
    edep = (w * dep[:, None, None]).reshape(n, 9)
    keep = w.reshape(n, 9) > 0
    tr = np.repeat(trk, 9).reshape(n, 9)[keep]
    cr = crystal[keep]
    ed = edep[keep]
    amp = truth.ecl_gain[cr] * ed + rng.standard_normal(cr.size) * ECL_NOISE
    return {"track": tr, "crystal": cr, "amplitude": amp, "true_edep": ed}


def random_pxd_digits(rng: np.random.Generator, n_events: int, geom: Geometry, truth: Truth) -> dict[str, np.ndarray]:
    """random_calib: PXD pixel occupancy (uniform 3 % per event, hot pixels fire 50 %, dead never)."""
    npxd = int(geom.is_pxd.sum())
    npix = PXD_NU * PXD_NV
    counts = rng.poisson(PXD_RANDOM_OCCUPANCY * npix, (n_events, npxd))
    ev = np.repeat(np.repeat(np.arange(n_events), npxd), counts.reshape(-1))
    sens = np.repeat(np.tile(np.arange(npxd), n_events), counts.reshape(-1))
    pix = rng.integers(0, npix, ev.size)
    ok = truth.pxd_status[sens, pix] != 2
    hs, hp = np.nonzero(truth.pxd_status == 1)
    fire = rng.random((n_events, hs.size)) < PXD_HOT_FIRE_PROB
    he, hi = np.nonzero(fire)
    ev = np.concatenate([ev[ok], he])
    sens = np.concatenate([sens[ok], hs[hi]])
    pix = np.concatenate([pix[ok], hp[hi]])
    order = np.lexsort((pix, sens, ev))
    ev, sens, pix = ev[order], sens[order], pix[order]
    return {"event": ev, "sensor": geom.sensor_id[sens], "pixel": pix, "adc": rng.gamma(3.0, 10.0, ev.size)}
