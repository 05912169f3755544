"""A barrel-like toy alignment problem with known truth (for tests and benchmarks).

Cylindrical layers of flat sensors (u along φ, v along z, w radial), 6 rigid-body parameters per sensor
(du, dv, dw, α, β, γ), labels 10·(s+1)+p as in the shared reference data. Tracks are linearised helices
with 5 local parameters (d0, φ0, κ, z0, tanλ): at radius R, u = d0 + R φ0 + κR²/2 and v = z0 + R tanλ
(local derivatives exact, so the local fit is linear). Global derivatives are the usual rigid-body ones with
track slopes (tu, tv) in the sensor frame. Measurements = a·l_true + d·g_true + noise, so the fit recovers
+g_true (the sign pede reports).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mille import MilleRecords

__all__ = ["BarrelGeometry", "barrel_geometry", "generate_tracks"]


@dataclass
class BarrelGeometry:
    radius: np.ndarray  # per sensor
    phi: np.ndarray  # centre angle
    z: np.ndarray  # centre z
    layer: np.ndarray
    layer_radius: np.ndarray
    layer_nphi: np.ndarray
    layer_nz: np.ndarray
    layer_first: np.ndarray
    half_z: np.ndarray

    @property
    def n_sensors(self) -> int:
        return int(self.radius.size)

    @property
    def labels(self) -> np.ndarray:
        s = np.arange(self.n_sensors)
        return (10 * (s[:, None] + 1) + np.arange(1, 7)[None, :]).ravel()


def barrel_geometry(n_params: int, n_layers: int = 6, r_min: float = 40.0, r_max: float = 300.0,
                    aspect: float = 1.0) -> BarrelGeometry:
    """About ``n_params`` parameters (6 per sensor) on ``n_layers`` layers; sensors ~square."""
    nsens = max(n_layers, n_params // 6)
    radii = np.linspace(r_min, r_max, n_layers)
    half_z = radii * 1.2 + 30.0
    # sensors per layer proportional to the layer area
    area = radii * half_z
    per = np.maximum(1, np.round(nsens * area / area.sum())).astype(int)
    nphi = np.maximum(3, np.round(np.sqrt(per * 2 * np.pi * radii / (2 * half_z) * aspect))).astype(int)
    nz = np.maximum(1, np.round(per / nphi)).astype(int)
    rs, ph, zs, ly = [], [], [], []
    for layer in range(n_layers):
        ip, iz = np.meshgrid(np.arange(nphi[layer]), np.arange(nz[layer]), indexing="ij")
        rs.append(np.full(ip.size, radii[layer]))
        ph.append((ip.ravel() + 0.5) * 2 * np.pi / nphi[layer])
        zs.append(-half_z[layer] + (iz.ravel() + 0.5) * 2 * half_z[layer] / nz[layer])
        ly.append(np.full(ip.size, layer))
    first = np.concatenate([[0], np.cumsum(nphi * nz)[:-1]])
    return BarrelGeometry(np.concatenate(rs), np.concatenate(ph), np.concatenate(zs), np.concatenate(ly),
                          radii, nphi, nz, first, half_z)


def generate_tracks(geo: BarrelGeometry, n_tracks: int, truth: np.ndarray, rng: np.random.Generator,
                    sig_u: float = 0.02, sig_v: float = 0.04, min_hits: int = 4) -> MilleRecords:
    """Records for ``n_tracks`` tracks (fewer hits than ``min_hits`` -> track dropped)."""
    d0 = rng.normal(0, 0.05, n_tracks)
    phi0 = rng.uniform(0, 2 * np.pi, n_tracks)
    kappa = rng.uniform(-1e-3, 1e-3, n_tracks)
    z0 = rng.normal(0, 20.0, n_tracks)
    tl = rng.uniform(-1.2, 1.2, n_tracks)
    R = geo.layer_radius[None, :]
    phi = phi0[:, None] + d0[:, None] / R + kappa[:, None] * R / 2
    zt = z0[:, None] + R * tl[:, None]
    inside = np.abs(zt) < geo.half_z[None, :]
    nphi = geo.layer_nphi[None, :]
    nz = geo.layer_nz[None, :]
    iphi = np.floor(np.mod(phi, 2 * np.pi) / (2 * np.pi) * nphi).astype(np.int64) % nphi
    iz = np.clip(np.floor((zt + geo.half_z[None, :]) / (2 * geo.half_z[None, :]) * nz).astype(np.int64), 0, nz - 1)
    sens = geo.layer_first[None, :] + iphi * nz + iz
    nh = inside.sum(axis=1)
    keep = nh >= min_hits
    inside &= keep[:, None]
    t_idx, l_idx = np.nonzero(inside)  # hits, track-major order
    s = sens[t_idx, l_idx]
    Rh = geo.layer_radius[l_idx]
    # local sensor coordinates of the hit and track slopes
    dphi = np.angle(np.exp(1j * (phi[t_idx, l_idx] - geo.phi[s])))
    u = Rh * dphi
    v = zt[t_idx, l_idx] - geo.z[s]
    tu = dphi + kappa[t_idx] * Rh
    tv = tl[t_idx]
    nhits = t_idx.size
    # two measurements per hit (u then v)
    loc = np.zeros((2 * nhits, 5))
    loc[0::2, 0] = 1.0
    loc[0::2, 1] = Rh
    loc[0::2, 2] = Rh * Rh / 2
    loc[1::2, 3] = 1.0
    loc[1::2, 4] = Rh
    gd = np.zeros((2 * nhits, 6))
    gd[0::2] = np.stack([np.ones(nhits), np.zeros(nhits), tu, v * tu, -u * tu, v], axis=1)
    gd[1::2] = np.stack([np.zeros(nhits), np.ones(nhits), tv, v * tv, -u * tv, -u], axis=1)
    glab = np.repeat(10 * (s + 1), 2)[:, None] + np.arange(1, 7)[None, :]
    ltrue = np.stack([d0, np.zeros(n_tracks), kappa, z0, tl], axis=1)[t_idx]  # φ0 absorbed in u
    ltrue = np.repeat(ltrue, 2, axis=0)
    sig = np.tile([sig_u, sig_v], nhits)
    gtrue = truth.reshape(-1, 6)[np.repeat(s, 2)]
    value = (loc * ltrue).sum(1) + (gd * gtrue).sum(1) + rng.normal(0, 1, 2 * nhits) * sig
    # records: one per kept track; measurements are track-major
    ntr = np.bincount(t_idx, minlength=n_tracks)[keep]
    rec_ptr = np.concatenate([[0], np.cumsum(2 * ntr)])
    from .mille import records_from_dense

    return records_from_dense(value, sig, loc, glab, gd, rec_ptr)
