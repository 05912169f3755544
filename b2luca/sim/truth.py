"""Injected truth of one bucket (from a seed) and the conditions payloads built from it.

Payload names and array keys (the calibrations write the SAME names/keys; keys marked *truth only*
are extra information in the truth tag and are ignored by reconstruction):

``VXDAlignment``
    ``sensor_id`` int32 (212,) VxdIDs; ``params`` float64 (212, 6) = (du, dv, dw [mm], alpha, beta,
    gamma [rad]) rigid-body correction per sensor in its nominal local frame (see
    :func:`b2luca.reco.geometry.aligned_frames`).  In the truth these are the *total* effective sensor
    displacements (half-shell and weak-mode parts folded in, including the weak modes injected on request
    with ``simulation.weak_modes``, see :func:`make_truth`).  Truth only: ``halfshell_params`` (4, 6)
    global (dx, dy, dz, rot_x, rot_y, rot_z) of the half shells (0 PXD +x, 1 PXD -x, 2 SVD +x, 3 SVD -x;
    rotations about the origin), ``weak_radial`` (1,) relative radial expansion of the SVD,
    ``weak_twist`` (1,) twist d(phi)/dz [rad/mm] of the whole VXD.
``CDCAlignment``
    ``layer`` int32 (56,); ``params`` float64 (56, 3) = (dx, dy [mm], dphi [rad]) of each wire layer.
``CDCTimeZeros``
    ``board`` int32 (292,); ``t0`` float64 (292,) [ns]; drift time = tdc - t0[board].
``SVDTimeOffsets``
    ``sensor_id`` int32 (172,) SVD VxdIDs; ``offset`` float64 (172,) [ns]; hit time - offset = event time (0).
``ECLCrystalEnergy``
    ``crystal`` int32 (6624,); ``constant`` float64 (6624,): energy [GeV] = constant * amplitude.
``BeamSpot``
    ``position`` float64 (3,) [mm]; ``position_error`` (3, 3) covariance of the position [mm^2];
    ``size`` (3, 3) covariance of the luminous region [mm^2].
``PXDMasks``
    ``sensor_id`` int32 (40,) PXD VxdIDs; ``status`` uint8 (40, 7500) per toy pixel (id = iv*50 + iu):
    0 good, 1 hot, 2 dead.
``SVDNoise``
    ``sensor_id`` int32 (172,); ``noise_u``, ``noise_v`` float64 (172,) strip noise [ADC].
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..alignment.weak_modes import distortion
from ..reco.geometry import (N_ECL_CRYSTALS, N_PXD_PIXELS, NOMINAL_BEAMSPOT_SIZE, Geometry, aligned_frames,
                             nominal_geometry, rotation_angles, rotation_matrix)
from ..reco.nominal import nominal_payloads as nominal_payloads  # re-exported (moved to b2luca.reco)
from ..reco.parts import PARTS, vxd_part_mask

# truth scales
SIGMA_SENSOR_SHIFT = 0.020  # mm
SIGMA_SENSOR_ROT = 0.5e-3  # rad
SIGMA_HALFSHELL_SHIFT = 0.050  # mm
SIGMA_HALFSHELL_ROT = 0.1e-3  # rad
WEAK_RADIAL = 2.0e-4  # relative
WEAK_TWIST = 1.0e-6  # rad / mm
SIGMA_CDC_SHIFT = 0.050  # mm
SIGMA_CDC_ROT = 0.1e-3  # rad
SIGMA_CDC_T0 = 3.0  # ns
SIGMA_SVD_T0 = 5.0  # ns
SIGMA_ECL_GAIN = 0.03
PXD_HOT_FRACTION = 0.001
PXD_DEAD_FRACTION = 0.005


@dataclass(frozen=True)
class Truth:
    """All injected truth of a bucket."""

    vxd_params: np.ndarray  # (S, 6) effective
    halfshell_params: np.ndarray  # (4, 6)
    weak_radial: float
    weak_twist: float
    cdc_params: np.ndarray  # (56, 3)
    cdc_t0: np.ndarray  # (boards,)
    svd_offset: np.ndarray  # (172,)
    ecl_gain: np.ndarray  # (6624,) amplitude = gain * deposited energy
    beam_position: np.ndarray  # (3,)
    beam_size: np.ndarray  # (3,) sigmas
    pxd_status: np.ndarray  # (40, 7500) uint8
    svd_noise: np.ndarray  # (172, 2)

    def sensor_frames(self, geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """True (misaligned) sensor centres and rotations."""
        return aligned_frames(geom, self.vxd_params)


def _effective_params(geom: Geometry, local: np.ndarray, halfshell: np.ndarray, radial: float,
                      twist: float) -> np.ndarray:
    """Compose sensor-local, weak-mode and half-shell motions into effective per-sensor params."""
    c, r = aligned_frames(geom, local)  # sensor-level motion first
    # weak modes: twist = rotation about z by twist * z_nominal; radial expansion of the SVD
    ang = twist * geom.center[:, 2]
    rz = rotation_matrix(np.zeros_like(ang), np.zeros_like(ang), ang)
    c = np.einsum("sij,sj->si", rz, c)
    r = rz @ r
    svd = ~geom.is_pxd
    c[svd, :2] += radial * geom.center[svd, :2]
    # half shells: rigid motion about the origin
    hs = halfshell[geom.halfshell]
    rg = rotation_matrix(hs[:, 3], hs[:, 4], hs[:, 5])
    c = np.einsum("sij,sj->si", rg, c) + hs[:, :3]
    r = rg @ r
    d = np.einsum("sji,sj->si", geom.rot, c - geom.center)
    delta = np.swapaxes(geom.rot, 1, 2) @ r
    return np.concatenate([d, rotation_angles(delta)], axis=1)


def make_truth(seed: int, geom: Geometry | None = None, weak_modes: Mapping[str, float] | None = None) -> Truth:
    """Draw the bucket truth from ``seed`` (deterministic).

    ``weak_modes``: extra distortions injected on request ({mode: amplitude}, names and units of
    :mod:`b2luca.alignment.weak_modes`, e.g. ``{"vxd_radial_expansion_um": 20, "cdc_twist_urad": 50}``), added
    to the drawn misalignment (the random draws do not change, so without them the truth is the same).
    """
    geom = geom or nominal_geometry()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7AB7]))
    s = geom.n_sensors
    local = np.concatenate([rng.normal(0, SIGMA_SENSOR_SHIFT, (s, 3)), rng.normal(0, SIGMA_SENSOR_ROT, (s, 3))], 1)
    halfshell = np.concatenate([rng.normal(0, SIGMA_HALFSHELL_SHIFT, (4, 3)),
                                rng.normal(0, SIGMA_HALFSHELL_ROT, (4, 3))], 1)
    radial = WEAK_RADIAL * (1.0 + 0.2 * rng.standard_normal())
    twist = WEAK_TWIST * (1.0 + 0.2 * rng.standard_normal())
    nl = geom.n_cdc_layers
    cdc = np.concatenate([rng.normal(0, SIGMA_CDC_SHIFT, (nl, 2)), rng.normal(0, SIGMA_CDC_ROT, (nl, 1))], 1)
    cdc_t0 = rng.normal(0, SIGMA_CDC_T0, geom.n_cdc_boards)
    n_svd = int((~geom.is_pxd).sum())
    n_pxd = int(geom.is_pxd.sum())
    svd_offset = rng.normal(0, SIGMA_SVD_T0, n_svd)
    ecl_gain = rng.normal(1.0, SIGMA_ECL_GAIN, N_ECL_CRYSTALS)
    beam_position = np.array([0.40, -0.05, 0.30]) + rng.normal(0, [0.02, 0.005, 0.05])
    beam_size = NOMINAL_BEAMSPOT_SIZE * rng.uniform(0.9, 1.1, 3)
    x = rng.random((n_pxd, N_PXD_PIXELS))
    status = np.zeros((n_pxd, N_PXD_PIXELS), dtype=np.uint8)
    status[x < PXD_HOT_FRACTION] = 1
    status[(x >= PXD_HOT_FRACTION) & (x < PXD_HOT_FRACTION + PXD_DEAD_FRACTION)] = 2
    svd_noise = rng.normal(4.0, 0.3, (n_svd, 2))
    vxd = _effective_params(geom, local, halfshell, radial, twist)
    if weak_modes:
        extra_vxd, extra_cdc = distortion(weak_modes, geom)
        vxd, cdc = vxd + extra_vxd, cdc + extra_cdc
    return Truth(vxd_params=vxd, halfshell_params=halfshell,
                 weak_radial=float(radial), weak_twist=float(twist), cdc_params=cdc, cdc_t0=cdc_t0,
                 svd_offset=svd_offset, ecl_gain=ecl_gain, beam_position=beam_position, beam_size=beam_size,
                 pxd_status=status, svd_noise=svd_noise)


# --- parts that move between runs (simulation.movements) ---------------------------------------------
@dataclass(frozen=True)
class Movement:
    """A rigid translation ``shift_um`` (global x, y, z in µm) of ``part`` from run ``from_run`` on."""

    part: str
    from_run: int
    shift_um: tuple[float, float, float]


def parse_movements(items: Sequence[Mapping[str, Any]] | None, source: str = "simulation.movements") -> list[Movement]:
    """Movements from their configuration form ``[{part, from_run, shift_um: [x, y, z]}]``; all problems at once
    (ValueError, one line each naming the entry and key)."""
    out, problems = [], []
    for i, m in enumerate(items or []):
        where = f"{source}[{i}]"
        if not isinstance(m, Mapping):
            problems.append(f"{where}: expected a mapping with part, from_run, shift_um, got {m!r}")
            continue
        missing = [k for k in ("part", "from_run", "shift_um") if k not in m]
        if missing:
            problems.append(f"{where}: missing key(s) {', '.join(missing)}")
            continue
        part, run, shift = m["part"], m["from_run"], m["shift_um"]
        if part not in PARTS:
            problems.append(f"{where}.part: unknown part {part!r}; known: {', '.join(PARTS)}")
        if not isinstance(run, int) or isinstance(run, bool) or run < 0:
            problems.append(f"{where}.from_run: expected a run number >= 0, got {run!r}")
        if not (isinstance(shift, (list, tuple)) and len(shift) == 3
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in shift)):
            problems.append(f"{where}.shift_um: expected [x, y, z] in micrometres, got {shift!r}")
        elif part == "CDC" and shift[2] != 0:
            problems.append(f"{where}.shift_um: the CDC layers have no z parameter; z must be 0, got {shift[2]!r}")
        if not problems:
            out.append(Movement(str(part), int(run), (float(shift[0]), float(shift[1]), float(shift[2]))))
    if problems:
        raise ValueError("\n".join(problems))
    return out


def truth_for_run(truth: Truth, movements: Sequence[Movement], run: int, geom: Geometry | None = None) -> Truth:
    """The truth of ``run``: ``truth`` with every movement whose ``from_run`` <= ``run`` applied (in order)."""
    active = [m for m in movements if m.from_run <= run]
    if not active:
        return truth
    geom = geom or nominal_geometry()
    vxd, cdc = truth.vxd_params.copy(), truth.cdc_params.copy()
    for m in active:
        t = np.asarray(m.shift_um) * 1e-3  # mm
        mask = vxd_part_mask(geom, m.part)
        # a global translation t of a sensor is d -> d + rotᵀ t in its nominal local frame
        vxd[mask, :3] += np.einsum("sji,j->si", geom.rot[mask], t)
        if m.part == "CDC":
            cdc[:, :2] += t[:2]
    return replace(truth, vxd_params=vxd, cdc_params=cdc)


def movement_intervals(movements: Sequence[Movement], runs: Sequence[int]) -> list[tuple[int, int]]:
    """(first run, last run) of the runs of ``runs`` with the same set of movements in force."""
    rs = sorted(int(r) for r in runs)
    starts = sorted({min(rs)} | {m.from_run for m in movements if min(rs) < m.from_run <= max(rs)})
    return [(s, (starts[i + 1] - 1) if i + 1 < len(starts) else max(rs)) for i, s in enumerate(starts)]


# --- payloads ------------------------------------------------------------------------------------
def _vxd(geom: Geometry, params: np.ndarray) -> dict[str, np.ndarray]:
    return {"sensor_id": geom.sensor_id.astype(np.int32), "params": np.asarray(params, dtype=np.float64)}


def truth_payloads(truth: Truth, geom: Geometry | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The injected truth as payloads (same names/keys as :func:`nominal_payloads`, plus truth-only keys)."""
    geom = geom or nominal_geometry()
    vxd = _vxd(geom, truth.vxd_params)
    vxd.update(halfshell_params=truth.halfshell_params, weak_radial=np.array([truth.weak_radial]),
               weak_twist=np.array([truth.weak_twist]))
    return {
        "VXDAlignment": vxd,
        "CDCAlignment": {"layer": np.arange(geom.n_cdc_layers, dtype=np.int32), "params": truth.cdc_params},
        "CDCTimeZeros": {"board": np.arange(geom.n_cdc_boards, dtype=np.int32), "t0": truth.cdc_t0},
        "SVDTimeOffsets": {"sensor_id": geom.svd_sensor_ids.astype(np.int32), "offset": truth.svd_offset},
        "ECLCrystalEnergy": {"crystal": np.arange(N_ECL_CRYSTALS, dtype=np.int32), "constant": 1.0 / truth.ecl_gain},
        "BeamSpot": {"position": truth.beam_position, "position_error": np.zeros((3, 3)),
                     "size": np.diag(truth.beam_size ** 2)},
        "PXDMasks": {"sensor_id": geom.pxd_sensor_ids.astype(np.int32), "status": truth.pxd_status},
        "SVDNoise": {"sensor_id": geom.svd_sensor_ids.astype(np.int32), "noise_u": truth.svd_noise[:, 0],
                     "noise_v": truth.svd_noise[:, 1]},
    }


def staging_payloads(truth: Truth, seed: int, geom: Geometry | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """The experts' offline local calibrations: {"pxd": {"PXDMasks": ...}, "svd": {"SVDNoise": ...}}.

    The offline PXD mask knows 80 % of the defective pixels (chosen from ``seed``); the SVD noise is the truth.
    """
    geom = geom or nominal_geometry()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x57A6]))
    status = truth.pxd_status.copy()
    status[(status > 0) & (rng.random(status.shape) > 0.8)] = 0
    tp = truth_payloads(truth, geom)
    return {"pxd": {"PXDMasks": {"sensor_id": geom.pxd_sensor_ids.astype(np.int32), "status": status}},
            "svd": {"SVDNoise": tp["SVDNoise"]}}
