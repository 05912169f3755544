"""Frame constraints (pede constraint files) and the truth in the alignment frame."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment.constraints import (FRAME_DOFS, frame_constraints, read_constraints, rigid_motion_jacobian, vxd_labels,
                                          write_constraints)
from b2luca.alignment.errors import SteeringError
from b2luca.alignment.frame import truth_in_frame
from b2luca.alignment.steering import Constraint
from b2luca.reco.geometry import aligned_frames, nominal_geometry, rotation_angles, rotation_matrix


def _rigid(geom, t, w):
    """Exact sensor params of a rigid motion x -> R(w) x + t of the nominal VXD."""
    r = rotation_matrix(*w)
    c = np.einsum("ij,sj->si", r, geom.center) + t
    d = np.einsum("sji,sj->si", geom.rot, c - geom.center)
    ang = rotation_angles(np.swapaxes(geom.rot, 1, 2) @ r @ geom.rot)
    return np.concatenate([d, ang], axis=1)


def test_jacobian_is_the_first_order_rigid_motion():
    g = nominal_geometry()
    t, w = np.array([0.03, -0.02, 0.05]), np.array([2e-4, -1e-4, 3e-4])
    exact = _rigid(g, t, w)
    lin = np.einsum("sik,k->si", rigid_motion_jacobian(g), np.concatenate([t, w]))
    assert np.max(np.abs(exact - lin)) < 5e-5  # second order: |w|^2 * |c| ~ (4e-4)^2 * 300 mm


def test_write_read_roundtrip_and_bad_file(tmp_path):
    g = nominal_geometry()
    cur = np.random.default_rng(1).normal(0, 0.01, (g.n_sensors, 6))
    cons = frame_constraints(g, cur)
    assert len(cons) == len(FRAME_DOFS) == 4 and len(frame_constraints(g, dofs=(0, 1, 5))) == 3
    path = write_constraints(tmp_path / "frame.txt", cons)
    back = read_constraints(path)
    assert len(back) == 4
    for a, b in zip(cons, back):
        assert a.value == b.value and a.sigma is None and b.sigma is None
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.factors, b.factors)
    assert set(back[0].labels) <= set(vxd_labels(g).ravel())
    # the constraints hold for the total parameters: current + correction with zero overall motion
    x = cur - np.einsum("sik,k->si", rigid_motion_jacobian(g), np.linalg.lstsq(
        rigid_motion_jacobian(g).reshape(-1, 6), cur.ravel(), rcond=None)[0])
    corr = (x - cur).ravel()
    lab_index = {int(lab): i for i, lab in enumerate(vxd_labels(g).ravel())}
    for c in cons:
        idx = np.array([lab_index[int(lab)] for lab in c.labels])
        assert np.dot(c.factors, corr[idx]) == pytest.approx(c.value, abs=1e-9)
    write_constraints(tmp_path / "m.txt", [Constraint(1.5, np.array([11, 12]), np.array([1.0, -1.0]), sigma=0.1)])
    assert read_constraints(tmp_path / "m.txt")[0].sigma == 0.1
    (tmp_path / "bad.txt").write_text("Constraint 0.0\n11 1.0 12\n")
    with pytest.raises(SteeringError, match=r"bad\.txt:2"):
        read_constraints(tmp_path / "bad.txt")


def test_truth_in_frame_removes_a_rigid_motion_only():
    g = nominal_geometry()
    rng = np.random.default_rng(5)
    local = np.concatenate([rng.normal(0, 0.02, (g.n_sensors, 3)), rng.normal(0, 5e-4, (g.n_sensors, 3))], 1)
    a = rigid_motion_jacobian(g)
    local -= np.einsum("sik,k->si", a, np.linalg.lstsq(a.reshape(-1, 6), local.ravel(), rcond=None)[0])
    t, w = np.array([0.04, -0.03, 0.06]), np.array([0.0, 0.0, 2e-4])
    moved = local + np.einsum("sik,k->si", a, np.concatenate([t, w]))
    cdc = rng.normal(0, 0.05, (56, 3))
    beam = np.array([0.4, -0.05, 0.3])
    cdc_moved = cdc + np.array([t[0], t[1], w[2]])
    cdc_moved[:, 2] -= t[2] * g.cdc_stereo / g.cdc_r  # the z shift of the stereo layers
    f = truth_in_frame(moved, cdc_moved, beam + t + np.cross(w, beam), geom=g)
    np.testing.assert_allclose(f.translation, t, atol=1e-9)
    np.testing.assert_allclose(f.rotation, w, atol=1e-12)
    np.testing.assert_allclose(f.vxd, local, atol=1e-9)
    np.testing.assert_allclose(f.beam_position, beam, atol=2e-5)  # second order: |w x t| = 1e-5 mm
    np.testing.assert_allclose(f.cdc[:, 2], cdc[:, 2], atol=1e-12)
    np.testing.assert_allclose(f.cdc[:, :2], cdc[:, :2], atol=5e-5)  # w_z x (dx, dy) <= 2e-4 * 0.15 mm
    # the result satisfies the frame constraints exactly
    assert np.max(np.abs(np.einsum("sik,si->k", a, f.vxd))) < 1e-9
    with pytest.raises(ValueError, match="vxd_params"):
        truth_in_frame(moved[:10], cdc)
    # a frame of fewer degrees of freedom keeps the others (here the z translation and the tilts)
    tilt = np.einsum("sik,k->si", a, np.array([0, 0, 0.05, 1e-4, -2e-4, 0]))
    f3 = truth_in_frame(local + tilt, cdc, geom=g, dofs=(0, 1, 5))
    assert f3.translation[2] == 0 and np.all(f3.rotation[:2] == 0)
    assert np.max(np.abs(np.einsum("sik,si->k", a[:, :, [0, 1, 5]], f3.vxd))) < 1e-9
    np.testing.assert_allclose(truth_in_frame(local + tilt, cdc, geom=g, dofs=tuple(range(6))).vxd, local, atol=1e-9)
    # the default frame (FRAME_DOFS) keeps the tilts: they are measured against the CDC
    f4 = truth_in_frame(local + tilt, cdc, geom=g)
    assert np.all(f4.rotation[:2] == 0) and abs(f4.translation[2]) > 0
    assert np.max(np.abs(np.einsum("sik,si->k", a[:, :, list(FRAME_DOFS)], f4.vxd))) < 1e-9
    # consistency with the sensor frames: the overall shift of the sensor centres is the translation
    c_moved, _ = aligned_frames(g, moved)
    c_frame, _ = aligned_frames(g, f.vxd)
    np.testing.assert_allclose(np.mean(c_moved - c_frame - np.cross(w, g.center), axis=0), t, atol=1e-5)


def test_frame_defined_by_the_measured_sensors_only():
    """Sensors the fit does not measure (held at their start values) stay out of the frame: the constraints
    and truth_in_frame use the same sensors, so an unmeasured sensor's true offset does not turn the frame."""
    g = nominal_geometry()
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.normal(0, 0.05, (g.n_sensors, 3)), rng.normal(0, 5e-4, (g.n_sensors, 3))], 1)
    m = np.ones(g.n_sensors, bool)
    m[[5, 100, 200]] = False
    cons = frame_constraints(g, p, sensors=m)
    lab = vxd_labels(g)
    assert not np.isin(lab[~m].ravel(), np.concatenate([c.labels for c in cons])).any()
    assert all(abs(c.value) < 1e-12 for c in frame_constraints(g, truth_in_frame(p, np.zeros((0, 3)), geom=g, sensors=m).vxd,
                                                               sensors=m))
    moved = p.copy()
    moved[~m] += 0.05  # the unmeasured sensors far off: the frame of the others does not move
    a, b = (truth_in_frame(x, np.zeros((0, 3)), geom=g, sensors=m) for x in (p, moved))
    np.testing.assert_allclose(a.vxd[m], b.vxd[m], atol=1e-12)
    assert np.abs(truth_in_frame(moved, np.zeros((0, 3)), geom=g).vxd[m] - a.vxd[m]).max() > 1e-4
