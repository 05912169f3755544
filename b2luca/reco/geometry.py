"""Nominal geometry of the toy Belle II-like detector, shared by simulation and reconstruction.

Built deterministically (no random numbers): :func:`nominal_geometry` returns the same object every
call.  Units everywhere: mm, ns, GeV, tesla, radians.  Global frame: z along the solenoid field (and
the electron beam), y up, x outwards of the ring.

VXD
    6 layers of flat sensors on ladders (PXD layers 1-2, SVD layers 3-6).  Ladder ``k`` of a layer
    sits at azimuth ``phi_k = 2 pi k / n_ladders`` with its sensor plane at distance ``r`` (+-0.5 mm
    alternating, so neighbours overlap in phi) and shifted along ``u`` ("windmill" tilt), like Belle II.
    Sensor local frame: ``u`` = r-phi direction ``(-sin phi_k, cos phi_k, 0)``, ``v`` = +z,
    ``w = u x v`` = outward normal.  A global point is ``x = center + rot @ (u, v, w)``.
    Sensors are numbered by a Belle II-like VxdID ``layer*10000 + ladder*100 + sensor`` (1-based
    ladder and sensor).  Internally sensors are indexed 0..211 in that order (``sensor_index``).

CDC
    56 wire layers in 9 superlayers (A U A V A U A V A: axial / stereo), r = 168 ... 1111 mm.  A wire
    of a stereo layer runs at azimuth ``phi_w(z) = phi_w0 + z * stereo_slope / r``.  Boards group
    8 neighbouring wires x all layers of a superlayer (292 boards).

ECL
    Barrel of 46 (theta) x 144 (phi) crystals at inner radius 1250 mm, theta 32.2 .. 128.7 deg.
    Crystal id = ``itheta * 144 + iphi`` (0-based, barrel only).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

B_FIELD_T = 1.5
#: curvature constant: omega [1/mm] = charge * C_B / pT [GeV]
C_B = 0.299792458e-3 * B_FIELD_T

# --- VXD layer table: r, n_ladders, n_sensors_along_z, width(u), length(v), u-shift, sigma_u, sigma_v, x/X0
_VXD_LAYERS = (
    # layer r     nlad nsen width length shift  sig_u  sig_v  x/X0   z_offset (forward-shifted ladders)
    (1, 14.0, 8, 2, 12.5, 44.8, 1.0, 0.010, 0.012, 0.002, 10.0),
    (2, 22.0, 12, 2, 12.5, 61.4, 1.0, 0.010, 0.012, 0.002, 11.0),
    (3, 39.0, 7, 2, 38.4, 122.8, -2.0, 0.015, 0.025, 0.006, 22.0),
    (4, 80.0, 10, 3, 57.6, 122.8, -3.0, 0.015, 0.025, 0.006, 35.0),
    (5, 104.0, 12, 4, 57.6, 122.8, -3.0, 0.015, 0.025, 0.006, 50.0),
    (6, 135.0, 16, 5, 57.6, 122.8, -3.0, 0.015, 0.025, 0.006, 60.0),
)
#: toy PXD pixel matrix (each toy pixel stands for a block of real pixels)
PXD_NU, PXD_NV = 50, 150
N_PXD_PIXELS = PXD_NU * PXD_NV  # toy pixels per PXD sensor

# --- CDC
_CDC_SL_LAYERS = (8, 6, 6, 6, 6, 6, 6, 6, 6)
_CDC_SL_WIRES = (160, 160, 192, 224, 256, 288, 320, 352, 384)
_CDC_SL_STEREO = (0.0, 0.050, 0.0, -0.058, 0.0, 0.065, 0.0, -0.072, 0.0)  # stereo angle (rad)
CDC_WIRES_PER_BOARD = 8
CDC_DRIFT_VELOCITY = 0.040  # mm/ns
CDC_SIGMA = 0.110  # mm, drift-distance resolution
CDC_INNER_WALL_R = 160.0
CDC_INNER_WALL_X0 = 0.003
BEAMPIPE_R = 10.0
BEAMPIPE_X0 = 0.005

# --- ECL
ECL_R = 1250.0
ECL_NTHETA, ECL_NPHI = 46, 144
ECL_THETA_MIN, ECL_THETA_MAX = np.deg2rad(32.2), np.deg2rad(128.7)

# --- beams (HER e- 7 GeV along +z, LER e+ 4 GeV)
E_HER, E_LER = 7.0, 4.0
SQRT_S = 2.0 * np.sqrt(E_HER * E_LER)
BOOST_BETAGAMMA = (E_HER - E_LER) / SQRT_S
NOMINAL_BEAMSPOT_SIZE = np.array([0.010, 0.0002, 0.350])  # sigma x, y, z (mm)


def vxd_id(layer: np.ndarray | int, ladder: np.ndarray | int, sensor: np.ndarray | int) -> np.ndarray:
    """Belle II-like VxdID integer ``layer*10000 + ladder*100 + sensor`` (1-based ladder/sensor)."""
    return np.asarray(layer) * 10000 + np.asarray(ladder) * 100 + np.asarray(sensor)


def rotation_matrix(alpha: np.ndarray, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Rotation ``Rz(gamma) @ Ry(beta) @ Rx(alpha)`` (rotations about local u, v, w); shape (..., 3, 3).

    To first order ``R p = p + (alpha, beta, gamma) x p``.
    """
    a, b, g = (np.asarray(t, dtype=float) for t in (alpha, beta, gamma))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    r = np.empty(np.broadcast(a, b, g).shape + (3, 3))
    r[..., 0, 0] = cg * cb
    r[..., 0, 1] = cg * sb * sa - sg * ca
    r[..., 0, 2] = cg * sb * ca + sg * sa
    r[..., 1, 0] = sg * cb
    r[..., 1, 1] = sg * sb * sa + cg * ca
    r[..., 1, 2] = sg * sb * ca - cg * sa
    r[..., 2, 0] = -sb
    r[..., 2, 1] = cb * sa
    r[..., 2, 2] = cb * ca
    return r


def rotation_angles(r: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotation_matrix`: (..., 3, 3) -> (..., 3) angles (alpha, beta, gamma)."""
    beta = -np.arcsin(np.clip(r[..., 2, 0], -1.0, 1.0))
    alpha = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    gamma = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.stack([alpha, beta, gamma], axis=-1)


@dataclass(frozen=True)
class Geometry:
    """Arrays describing the nominal detector (see module docstring).  Treat as read-only."""

    # VXD, one entry per sensor (212)
    sensor_id: np.ndarray  # VxdID
    layer: np.ndarray  # 1..6
    ladder: np.ndarray  # 1-based
    sensor: np.ndarray  # 1-based along z
    center: np.ndarray  # (S, 3)
    rot: np.ndarray  # (S, 3, 3) columns u, v, w
    half_u: np.ndarray
    half_v: np.ndarray
    sigma_u: np.ndarray
    sigma_v: np.ndarray
    halfshell: np.ndarray  # 0 PXD +x, 1 PXD -x, 2 SVD +x, 3 SVD -x
    layer_r: np.ndarray  # (6,) nominal layer radius
    layer_x0: np.ndarray  # (6,) x/X0 per layer (normal incidence)
    layer_nladders: np.ndarray  # (6,)
    layer_nsensors: np.ndarray  # (6,)
    layer_zoffset: np.ndarray  # (6,) z of the ladder centre
    layer_first: np.ndarray  # (6,) index of the first sensor of the layer
    # CDC, one entry per layer (56)
    cdc_r: np.ndarray
    cdc_nwires: np.ndarray
    cdc_stereo: np.ndarray  # stereo slope tan(angle); phi_w(z) = phi_w0 + z * stereo / r
    cdc_phi_offset: np.ndarray  # phi of wire 0 at z = 0
    cdc_zmin: np.ndarray
    cdc_zmax: np.ndarray
    cdc_superlayer: np.ndarray
    cdc_board_offset: np.ndarray  # first board id of the layer's superlayer
    n_cdc_boards: int

    @property
    def n_sensors(self) -> int:
        return int(self.sensor_id.size)

    @property
    def is_pxd(self) -> np.ndarray:
        return self.layer <= 2

    @property
    def pxd_sensor_ids(self) -> np.ndarray:
        return self.sensor_id[self.is_pxd]

    @property
    def svd_sensor_ids(self) -> np.ndarray:
        return self.sensor_id[~self.is_pxd]

    @property
    def n_cdc_layers(self) -> int:
        return int(self.cdc_r.size)

    def sensor_index(self, sensor_id: np.ndarray) -> np.ndarray:
        """Map VxdIDs to internal indices 0..S-1; raises ValueError for unknown ids."""
        sid = np.asarray(sensor_id)
        idx = np.searchsorted(self.sensor_id, sid)
        idx = np.clip(idx, 0, self.n_sensors - 1)
        bad = self.sensor_id[idx] != sid
        if np.any(bad):
            raise ValueError(f"unknown VXD sensor id(s): {np.unique(sid[bad])[:10].tolist()}")
        return idx

    def cdc_board(self, layer: np.ndarray, wire: np.ndarray) -> np.ndarray:
        """Board id of CDC channels (layer 0..55, wire 0..n-1)."""
        layer = np.asarray(layer)
        return self.cdc_board_offset[layer] + np.asarray(wire) // CDC_WIRES_PER_BOARD

    def pxd_pixel(self, sensor_index: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Toy pixel id ``iv * PXD_NU + iu`` of local positions (u, v) on PXD sensors (clipped to the matrix)."""
        hu, hv = self.half_u[sensor_index], self.half_v[sensor_index]
        iu = np.clip(((np.asarray(u) + hu) / (2 * hu) * PXD_NU).astype(np.int64), 0, PXD_NU - 1)
        iv = np.clip(((np.asarray(v) + hv) / (2 * hv) * PXD_NV).astype(np.int64), 0, PXD_NV - 1)
        return iv * PXD_NU + iu

    @staticmethod
    def ecl_crystal(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Crystal id for directions (theta, phi); -1 outside the barrel."""
        it = np.floor((theta - ECL_THETA_MIN) / (ECL_THETA_MAX - ECL_THETA_MIN) * ECL_NTHETA).astype(np.int64)
        ip = np.floor(np.mod(phi, 2 * np.pi) / (2 * np.pi) * ECL_NPHI).astype(np.int64) % ECL_NPHI
        return np.where((it >= 0) & (it < ECL_NTHETA), it * ECL_NPHI + ip, -1)

    @staticmethod
    def ecl_crystal_center(crystal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(theta, phi) of crystal centres."""
        crystal = np.asarray(crystal)
        it, ip = crystal // ECL_NPHI, crystal % ECL_NPHI
        theta = ECL_THETA_MIN + (it + 0.5) * (ECL_THETA_MAX - ECL_THETA_MIN) / ECL_NTHETA
        return theta, (ip + 0.5) * 2 * np.pi / ECL_NPHI


N_ECL_CRYSTALS = ECL_NTHETA * ECL_NPHI


@lru_cache(maxsize=1)
def nominal_geometry() -> Geometry:
    """The nominal geometry (deterministic, cached)."""
    cols: dict[str, list] = {k: [] for k in ("sid", "lay", "lad", "sen", "c", "rot", "hu", "hv", "su", "sv", "hs")}
    layer_first = []
    for lay, r, nlad, nsen, width, length, shift, su, sv, _x0, zoff in _VXD_LAYERS:
        layer_first.append(len(cols["sid"]))
        for k in range(nlad):
            phi = 2 * np.pi * k / nlad
            rr = r + (0.5 if k % 2 else -0.5)
            w_hat = np.array([np.cos(phi), np.sin(phi), 0.0])
            u_hat = np.array([-np.sin(phi), np.cos(phi), 0.0])
            v_hat = np.array([0.0, 0.0, 1.0])
            for s in range(nsen):
                z = (s - (nsen - 1) / 2) * length + zoff
                c = rr * w_hat + shift * u_hat + z * v_hat
                cols["sid"].append(int(vxd_id(lay, k + 1, s + 1)))
                cols["lay"].append(lay)
                cols["lad"].append(k + 1)
                cols["sen"].append(s + 1)
                cols["c"].append(c)
                cols["rot"].append(np.stack([u_hat, v_hat, w_hat], axis=1))
                cols["hu"].append(width / 2)
                cols["hv"].append(length / 2)
                cols["su"].append(su)
                cols["sv"].append(sv)
                cols["hs"].append((0 if lay <= 2 else 2) + (0 if c[0] >= 0 else 1))
    # CDC
    radii = [168.0 + 10.0 * i for i in range(8)]
    radii += list(np.linspace(257.0, 1111.0, 48))
    cdc_r, nw, stereo, phioff, sl, boff = [], [], [], [], [], []
    board = 0
    li = 0
    for isl, (nl, nwire, st) in enumerate(zip(_CDC_SL_LAYERS, _CDC_SL_WIRES, _CDC_SL_STEREO)):
        for j in range(nl):
            cdc_r.append(radii[li])
            nw.append(nwire)
            stereo.append(np.tan(st))
            phioff.append(2 * np.pi * (0.5 * (j % 2)) / nwire)
            sl.append(isl)
            boff.append(board)
            li += 1
        board += nwire // CDC_WIRES_PER_BOARD
    cdc_radius = np.array(cdc_r)
    return Geometry(
        sensor_id=np.array(cols["sid"], dtype=np.int32),
        layer=np.array(cols["lay"], dtype=np.int32),
        ladder=np.array(cols["lad"], dtype=np.int32),
        sensor=np.array(cols["sen"], dtype=np.int32),
        center=np.array(cols["c"]),
        rot=np.array(cols["rot"]),
        half_u=np.array(cols["hu"]),
        half_v=np.array(cols["hv"]),
        sigma_u=np.array(cols["su"]),
        sigma_v=np.array(cols["sv"]),
        halfshell=np.array(cols["hs"], dtype=np.int32),
        layer_r=np.array([t[1] for t in _VXD_LAYERS]),
        layer_x0=np.array([t[9] for t in _VXD_LAYERS]),
        layer_nladders=np.array([t[2] for t in _VXD_LAYERS]),
        layer_nsensors=np.array([t[3] for t in _VXD_LAYERS]),
        layer_zoffset=np.array([t[10] for t in _VXD_LAYERS]),
        layer_first=np.array(layer_first),
        cdc_r=cdc_radius,
        cdc_nwires=np.array(nw),
        cdc_stereo=np.array(stereo),
        cdc_phi_offset=np.array(phioff),
        cdc_zmin=-(0.45 * cdc_radius + 250.0),
        cdc_zmax=0.8 * cdc_radius + 400.0,
        cdc_superlayer=np.array(sl),
        cdc_board_offset=np.array(boff),
        n_cdc_boards=board,
    )


def aligned_frames(geom: Geometry, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensor frames after applying VXDAlignment ``params`` (S, 6) = (du, dv, dw, alpha, beta, gamma).

    Convention: a local point p = (u, v, w) of the aligned sensor is at
    ``x = center + rot @ (d + R(alpha, beta, gamma) @ p)``, i.e. the corrections are a rigid-body
    motion expressed in the nominal local frame.  Returns (centers (S, 3), rots (S, 3, 3)).
    """
    params = np.asarray(params, dtype=float)
    if params.shape != (geom.n_sensors, 6):
        raise ValueError(f"VXD alignment params must have shape ({geom.n_sensors}, 6), got {params.shape}")
    centers = geom.center + np.einsum("sij,sj->si", geom.rot, params[:, :3])
    rots = geom.rot @ rotation_matrix(params[:, 3], params[:, 4], params[:, 5])
    return centers, rots


def scatterer_radius(geom: Geometry, layer_index: int) -> float:
    """Radius of the cylinder on which the multiple scattering of VXD layer ``layer_index`` (0..5) acts."""
    return float(geom.layer_r[layer_index] + 1.0)


def cdc_drift_distance(x: np.ndarray, layer: np.ndarray, geom: Geometry, cdc_params: np.ndarray,
                       wire: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signed drift distance ``rho sin(phi - phi_wire(z))`` of points x (N, 3) in CDC ``layer`` (N,),
    evaluated in the layer frame shifted by (dx, dy) and rotated by dphi (``cdc_params`` (56, 3)).

    With ``wire=None`` the nearest wire is chosen; returns (distance, wire).  Shared by sim and reco.
    """
    par = cdc_params[layer]
    dx, dy = x[:, 0] - par[:, 0], x[:, 1] - par[:, 1]
    rho = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx) - par[:, 2]
    nw = geom.cdc_nwires[layer]
    base = geom.cdc_phi_offset[layer] + x[:, 2] * geom.cdc_stereo[layer] / geom.cdc_r[layer]
    if wire is None:
        wire = np.mod(np.rint((phi - base) * nw / (2 * np.pi)).astype(np.int64), nw)
    dphi = phi - base - 2 * np.pi * wire / nw
    dphi = np.arctan2(np.sin(dphi), np.cos(dphi))
    return rho * np.sin(dphi), wire
