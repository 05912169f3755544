"""Weak-mode shapes (b2luca.alignment.weak_modes), their projection, and the alignment frame (frame.py)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import weak_modes as W
from b2luca.alignment.frame import frame_motion, truth_in_frame
from b2luca.reco.geometry import aligned_frames, nominal_geometry, rotation_matrix

G = nominal_geometry()
# realistic per-parameter errors: VXD du, dv, dw [mm], rotations [rad]; CDC dx, dy [mm], dphi [rad]
ERR = np.concatenate([np.tile([0.003, 0.006, 0.010, 1e-4, 2e-4, 1e-4], G.n_sensors),
                      np.tile([0.005, 0.005, 1e-5], G.n_cdc_layers)])


def test_layout_round_trip_and_labels():
    lay = W.parameter_layout(G)
    rng = np.random.default_rng(0)
    v, c = rng.normal(size=(G.n_sensors, 6)), rng.normal(size=(G.n_cdc_layers, 3))
    v2, c2 = lay.unpack(lay.pack(v, c))
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(c2, c)
    # the labels of calibrations/vxdcdc_alignment.py: sensor_id * 10 + 1..6, 1_000_000 + layer * 10 + 1..3
    assert lay.labels[0] == G.sensor_id[0] * 10 + 1 and lay.labels[5] == G.sensor_id[0] * 10 + 6
    assert lay.labels[6 * G.n_sensors] == 1_000_001 and lay.labels[-1] == 1_000_000 + 550 + 3
    with pytest.raises(ValueError, match=r"shapes \(212, 6\)"):
        lay.pack(v[:3], c)


def test_vxd_shapes_are_the_named_distortions():
    r = np.hypot(G.center[:, 0], G.center[:, 1])
    phi = np.arctan2(G.center[:, 1], G.center[:, 0])
    z = G.center[:, 2]

    def centres(name, amp):
        v, _c = W.distortion({name: amp}, G)
        return aligned_frames(G, v)

    c, rot = centres("vxd_radial_expansion_um", 20.0)  # dr = 20 um * r / R_VXD, radially
    d = c - G.center
    np.testing.assert_allclose(np.hypot(c[:, 0], c[:, 1]) - r, 0.020 * r / W.R_VXD, atol=1e-9)
    np.testing.assert_allclose(d[:, 2], 0.0, atol=1e-12)
    np.testing.assert_allclose(rot, G.rot, atol=1e-12)
    c, rot = centres("vxd_twist_urad", 100.0)  # rotation about z by 100 urad * z / Z_VXD, sensors follow
    ang = 100e-6 * z / W.Z_VXD
    rz = rotation_matrix(np.zeros_like(ang), np.zeros_like(ang), ang)
    np.testing.assert_allclose(c, np.einsum("sij,sj->si", rz, G.center), atol=1e-8)
    np.testing.assert_allclose(rot, rz @ G.rot, atol=1e-8)
    c, _ = centres("vxd_telescope_um", 10.0)
    np.testing.assert_allclose(c[:, 2] - z, 0.010 * r / W.R_VXD, atol=1e-12)
    c, _ = centres("vxd_elliptical_um", 10.0)
    np.testing.assert_allclose(np.hypot(c[:, 0], c[:, 1]) - r, 0.010 * np.cos(2 * phi) * r / W.R_VXD, atol=1e-9)
    c, _ = centres("vxd_tx_um", 7.0)
    np.testing.assert_allclose(c - G.center, np.broadcast_to([0.007, 0, 0], c.shape), atol=1e-12)


def test_cdc_shapes():
    from b2luca.reco.geometry import cdc_drift_distance

    # a CDC z shift: every wire of a stereo layer, seen at z, sits where the nominal one sits at z - dz
    _v, c = W.distortion({"cdc_tz_um": 200.0}, G)
    rng = np.random.default_rng(1)
    layer = rng.integers(0, G.n_cdc_layers, 500)
    phi, z = rng.uniform(-np.pi, np.pi, 500), rng.uniform(-200, 300, 500)
    x = np.stack([G.cdc_r[layer] * np.cos(phi), G.cdc_r[layer] * np.sin(phi), z], axis=1)
    shifted, w = cdc_drift_distance(x, layer, G, c)
    nominal, _ = cdc_drift_distance(x - [0, 0, 0.200], layer, G, np.zeros_like(c), wire=w)
    np.testing.assert_allclose(shifted, nominal, atol=1e-4)
    assert np.abs(shifted - cdc_drift_distance(x, layer, G, np.zeros_like(c), wire=w)[0]).max() > 0.008  # 200 um x stereo
    _v, c = W.distortion({"cdc_twist_urad": 50.0, "cdc_sagitta_y_um": 30.0}, G)
    np.testing.assert_allclose(c[:, 2], 50e-6 * G.cdc_r / W.R_CDC)
    np.testing.assert_allclose(c[:, 1], 0.030 * G.cdc_r / W.R_CDC)
    np.testing.assert_array_equal(c[:, 0], 0.0)
    with pytest.raises(ValueError, match="unknown weak mode.*cdc_radial"):
        W.distortion({"cdc_radial_um": 1.0}, G)


def test_projection_recovers_amplitudes_with_unit_pulls():
    m = W.mode_matrix(W.MODE_NAMES, G)
    assert np.linalg.matrix_rank(m) == len(W.MODE_NAMES)  # every mode is its own shape
    rng = np.random.default_rng(7)
    pulls = []
    for _ in range(60):
        amp = rng.normal(0, 30, len(W.MODE_NAMES))
        p = W.project(m @ amp + rng.normal(0, ERR), ERR, geom=G)
        pulls.append((p.amplitude - amp) / p.error)
    pulls = np.array(pulls).ravel()
    n = pulls.size
    assert abs(pulls.mean()) < 3 / np.sqrt(n) and abs(pulls.std() - 1) < 3 / np.sqrt(2 * n)


def test_projection_error_from_full_covariance():
    """A covariance with a large component along a weak mode gives that mode a large error."""
    m = W.mode_matrix(["vxd_radial_expansion_um"], G)[:, 0]
    cov = np.diag(ERR ** 2) + (25.0 ** 2) * np.outer(m, m)  # 25 um of radial-expansion freedom
    p_diag = W.project(m * 10.0, ERR, geom=G)
    p_full = W.project(m * 10.0, ERR, cov=cov, geom=G)
    i = W.MODE_NAMES.index("vxd_radial_expansion_um")
    assert p_diag.error[i] < 2.0 and abs(p_full.error[i] - 25.0) < 0.5
    np.testing.assert_allclose(p_full.amplitude[i], 10.0, atol=1e-6)


def test_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="degenerate"):  # the CDC modes on VXD parameters only
        err = ERR.copy()
        err[6 * G.n_sensors:] = np.nan
        W.project(np.zeros(ERR.size), err, names=["cdc_twist_urad"], geom=G)
    with pytest.raises(ValueError, match="shape"):
        W.project(np.zeros(5), None, geom=G)


def test_truth_in_frame_removes_the_overall_motion_only():
    """The overall translation and z rotation of the VXD go (the frame constraints), the CDC moving with them
    (its tx, ty, rz and, via the stereo layers, tz); the VXD tilts (measured against the CDC) and the weak
    modes stay."""
    motion = {"vxd_tx_um": 30.0, "vxd_tz_um": -12.0, "vxd_ry_urad": 40.0, "vxd_rz_urad": 80.0,
              "cdc_tx_um": 30.0, "cdc_tz_um": -12.0, "cdc_rz_urad": 80.0}
    weak = {"vxd_radial_expansion_um": 20.0, "cdc_twist_urad": 50.0}
    v, c = W.distortion({**motion, **weak}, G)
    # (the ladder layout is not exactly symmetric: a radial expansion has a 1e-3 um rigid-body part)
    np.testing.assert_allclose(frame_motion(v, c, G), [30, 0, -12, 0, 40, 80], atol=2e-3)
    f = truth_in_frame(v, c, geom=G)
    # the same as the frame of the truth without the overall motion (removing it does not depend on it)
    ref = truth_in_frame(*W.distortion({**weak, "vxd_ry_urad": 40.0}, G), geom=G)
    np.testing.assert_allclose(f.vxd, ref.vxd, atol=1e-5)  # mm / rad
    np.testing.assert_allclose(f.cdc, ref.cdc, atol=1e-5)
    assert np.all(f.rotation[:2] == 0)  # the tilt stays in the truth
