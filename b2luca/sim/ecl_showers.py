"""Detailed ECL shower model for muon/pion separation (issue 16), written as the raw tree ``ecl_full``.

The simplified ``ecl`` tree (3x3 showers, a muon = one crystal) stays what the existing calibrations
see.  ``ecl_full`` is drawn from a separate random stream after everything else of an event sample,
so adding it changes no existing array.  Per track reaching the ECL barrel (toy units: GeV, mm):

* **muon** (and a pion that does not interact): an ionisation track.  dE/dx 0.56 MeV/mm along the
  path in the 300 mm deep crystal, Gamma-distributed (shape 12) fluctuations, limited by the kinetic
  energy (slow muons range out).  The path is oblique for low-pT tracks: incidence angle
  sin(alpha) = r_ECL |omega| / 2, lateral extent 0.35 x depth x tan(alpha) (in crystal widths, along
  phi, the side given by the charge; the factor stands for the crystals' tilt towards the track and the
  track's further bending inside the crystal); the deposit is spread uniformly along it -> 1-3 crystals
  in a line.
  Delta rays: each of the 8 neighbours of the entry crystal gets Exp(0.4 MeV) with probability 0.3.
* **pion**: interacts with probability 1 - exp(-L / 390 mm) (L = path length, CsI lambda_I);
  otherwise MIP-like as above.  An interacting pion leaves a MIP deposit up to the interaction depth,
  then a hadronic shower: visible energy U(0.3, 0.9) x the remaining kinetic energy, split (Dirichlet)
  over 1 + Poisson(1.5) fragments (at most 4) displaced N(0, 1 crystal) from the interaction point,
  each spread with a Gaussian profile of 0.6 crystal widths over its 3x3 crystals: dispersed.
* **beam background** (per track, in the 7x7 window around its entry crystal): each crystal gets a
  deposit Exp(3 MeV) with probability 0.2; electronics noise N(0, 0.3 MeV) on every stored crystal.

Stored: one row per (event, crystal) with deposit + noise above 0.8 MeV (the lowest readout threshold
of 1 MeV with margin), ``amplitude = gain[crystal] * energy`` like the ``ecl`` tree.  Energy
thresholds 1, 2, 5 MeV are applied by the reconstruction (``b2luca.ml.ecl_images``).
"""

from __future__ import annotations

import numpy as np

from ..reco.geometry import C_B, ECL_NPHI, ECL_NTHETA, ECL_R, ECL_THETA_MAX, ECL_THETA_MIN
from ..reco import helix as H

DEDX = 0.00056  # GeV/mm, minimum ionisation in CsI(Tl)
CRYSTAL_DEPTH = 300.0  # mm
LATERAL_FRACTION = 0.35  # lateral extent of an oblique track / (depth tan(alpha)) (toy)
LAMBDA_I = 390.0  # mm, nuclear interaction length of CsI
CRYSTAL_WIDTH = ECL_R * 2 * np.pi / ECL_NPHI  # mm (phi pitch at the front face)
BKG_PROBABILITY = 0.2
BKG_MEAN = 0.003  # GeV
NOISE = 0.0003  # GeV
STORE_THRESHOLD = 0.0008  # GeV
MAX_FRAGMENTS = 4
MUON, PION = 0, 2  # = generate.KIND_MU, generate.KIND_PI
MASS_MU, MASS_PI = 0.1056584, 0.1395704


def _deposit(emap: dict, event: np.ndarray, it: np.ndarray, ip: np.ndarray, e: np.ndarray) -> None:
    """Accumulate energy ``e`` into crystals (theta ring it, phi index ip) of ``event`` (lists in emap)."""
    ok = (it >= 0) & (it < ECL_NTHETA) & (e > 0)
    emap["event"].append(event[ok])
    emap["crystal"].append((it[ok] * ECL_NPHI + np.mod(ip[ok], ECL_NPHI)).astype(np.int64))
    emap["e"].append(e[ok])


def ecl_full_hits(event: np.ndarray, kind: np.ndarray, p: np.ndarray, h: np.ndarray, theta: np.ndarray,
                  phi: np.ndarray, gain: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Crystal hits of the detailed shower model (module docstring) for tracks entering the ECL.

    Per track: event index, particle kind (0 muon, 2 pion; others are skipped), momentum [GeV], perigee
    helix (5,), and the entry point's theta/phi.  Returns ``{"event", "crystal", "amplitude"}`` sorted
    by (event, crystal), one row per crystal hit."""
    sel = (kind == MUON) | (kind == PION)
    event, kind, p, h, theta, phi = event[sel], kind[sel], p[sel], h[sel], theta[sel], phi[sel]
    n = event.size
    mass = np.where(kind == MUON, MASS_MU, MASS_PI)
    ke = np.sqrt(p * p + mass * mass) - mass
    tpitch = (ECL_THETA_MAX - ECL_THETA_MIN) / ECL_NTHETA
    ft = (theta - ECL_THETA_MIN) / tpitch
    fp = np.mod(phi, 2 * np.pi) / (2 * np.pi / ECL_NPHI)
    sin_a = np.clip(ECL_R * np.abs(h[:, 2]) / 2, 0.0, 0.95)
    cos_a = np.sqrt(1 - sin_a ** 2)
    path = CRYSTAL_DEPTH / cos_a
    lateral = LATERAL_FRACTION * CRYSTAL_DEPTH * sin_a / cos_a / CRYSTAL_WIDTH * np.sign(h[:, 2])  # crystals, phi
    # all random numbers drawn in a fixed order for every track (reproducible stream)
    fluct = rng.gamma(12.0, 1 / 12.0, n)
    interacts = (kind == PION) & (rng.random(n) < 1 - np.exp(-path / LAMBDA_I))
    depth_frac = rng.random(n)
    visible = rng.uniform(0.3, 0.9, n)
    n_frag = np.minimum(1 + rng.poisson(1.5, n), MAX_FRAGMENTS)
    shares = rng.gamma(1.0, 1.0, (n, MAX_FRAGMENTS)) * (np.arange(MAX_FRAGMENTS)[None, :] < n_frag[:, None])
    shares /= shares.sum(axis=1, keepdims=True)
    frag_off = rng.standard_normal((n, MAX_FRAGMENTS, 2))
    delta_on = rng.random((n, 8)) < 0.3
    delta_e = rng.exponential(0.0004, (n, 8))
    bkg_on = rng.random((n, 7, 7)) < BKG_PROBABILITY
    bkg_e = rng.exponential(BKG_MEAN, (n, 7, 7))

    emap: dict[str, list] = {"event": [], "crystal": [], "e": []}
    # ionisation (muons, non-interacting pions, and interacting pions up to the interaction depth)
    mip_full = DEDX * path * fluct
    track_frac = np.where(interacts, depth_frac, 1.0)
    mip = np.minimum(mip_full * track_frac, ke)
    seg = track_frac * np.minimum(1.0, ke / np.maximum(mip_full, 1e-9))  # fraction of the path travelled
    steps = 10
    pos_phi = fp[:, None] + lateral[:, None] * seg[:, None] * (np.arange(steps)[None, :] + 0.5) / steps
    ev_s = np.repeat(event, steps)
    _deposit(emap, ev_s, np.repeat(np.floor(ft).astype(np.int64), steps),
             np.floor(pos_phi).astype(np.int64).reshape(-1), np.repeat(mip / steps, steps))
    # hadronic fragments
    had = interacts
    e_had = np.where(had, visible * np.maximum(ke - mip, 0.0), 0.0)
    ip_phi = fp + lateral * depth_frac
    off = np.array([-1, 0, 1])
    for k in range(MAX_FRAGMENTS):
        m = had & (shares[:, k] > 0)
        if not m.any():
            continue
        ct = ft[m] + frag_off[m, k, 0]
        cp = ip_phi[m] + frag_off[m, k, 1]
        it = np.floor(ct).astype(np.int64)[:, None, None] + off[None, :, None]
        ip = np.floor(cp).astype(np.int64)[:, None, None] + off[None, None, :]
        w = np.exp(-0.5 * (((it + 0.5 - ct[:, None, None]) / 0.6) ** 2 + ((ip + 0.5 - cp[:, None, None]) / 0.6) ** 2))
        w = w / w.sum(axis=(1, 2), keepdims=True)
        it, ip = np.broadcast_arrays(it, ip)
        e = (w * (e_had[m] * shares[m, k])[:, None, None])
        _deposit(emap, np.repeat(event[m], 9), it.reshape(-1), ip.reshape(-1), e.reshape(-1))
    # delta rays around the entry crystal
    it0, ip0 = np.floor(ft).astype(np.int64), np.floor(fp).astype(np.int64)
    nb = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)])
    _deposit(emap, np.repeat(event, 8), (it0[:, None] + nb[None, :, 0]).reshape(-1),
             (ip0[:, None] + nb[None, :, 1]).reshape(-1), np.where(delta_on, delta_e, 0.0).reshape(-1))
    # beam background in the 7x7 window
    w7 = np.arange(-3, 4)
    it7 = np.broadcast_to(it0[:, None, None] + w7[None, :, None], (n, 7, 7))
    ip7 = np.broadcast_to(ip0[:, None, None] + w7[None, None, :], (n, 7, 7))
    _deposit(emap, np.repeat(event, 49), it7.reshape(-1), ip7.reshape(-1), np.where(bkg_on, bkg_e, 0.0).reshape(-1))

    ev = np.concatenate(emap["event"]).astype(np.int64)
    cr = np.concatenate(emap["crystal"])
    e = np.concatenate(emap["e"])
    key, inv = np.unique(ev * (ECL_NTHETA * ECL_NPHI) + cr, return_inverse=True)
    energy = np.bincount(inv, e, minlength=key.size) + rng.standard_normal(key.size) * NOISE
    keep = energy > STORE_THRESHOLD
    ev_k, cr_k = np.divmod(key[keep], ECL_NTHETA * ECL_NPHI)
    return {"event": ev_k, "crystal": cr_k.astype(np.int32), "amplitude": gain[cr_k] * energy[keep]}


def gen_radmumu(rng: np.random.Generator, n_events: int, beam_position: np.ndarray, beam_size: np.ndarray):
    """Radiative di-muon events e+e- -> mu+mu-(gamma) after hard ISR (toy): two opposite-charge muons,
    each with pT uniform in 0.28-0.9 GeV and cos(theta) uniform in [-0.5, 0.75] (the ECL barrel), so that
    the low-momentum region (p < 0.6 GeV/c, where the KLM is out of reach) is well populated.
    Returns (event, perigee helix (N, 5), p, charge) per track."""
    ntrk = 2 * n_events
    pt = rng.uniform(0.28, 0.9, ntrk)
    cth = rng.uniform(-0.5, 0.75, ntrk)
    ph = rng.uniform(-np.pi, np.pi, ntrk)
    vtx = np.repeat(beam_position + rng.standard_normal((n_events, 3)) * beam_size, 2, axis=0)
    charge = np.stack([np.ones(n_events), -np.ones(n_events)], 1).reshape(-1) * \
        np.repeat(np.where(rng.random(n_events) < 0.5, 1.0, -1.0), 2)
    tanl = cth / np.sqrt(1 - cth ** 2)
    h, _ = H.from_point(vtx, ph, tanl, charge * C_B / pt)
    return np.repeat(np.arange(n_events), 2), h, pt * np.sqrt(1 + tanl ** 2), charge

