"""Weak modes of the VXD+CDC alignment are pinned by the frame constraints and the sample mix.

Tracks from the toy simulation (cosmics, di-muons with the beam-spot measurement) become Mille records
with the calibration's own code; the global matrix C is assembled and projected on layer-level modes
(rigid motions of every VXD layer, the CDC layers shifted/rotated together and linearly with the layer,
the beam spot).  The statistical error of the worst-determined mode is 1/sqrt(smallest eigenvalue) of C
on the space the frame constraints leave.  The CDC "shift growing with the layer" (the dy trend of
issue 14) is the weakest mode: the cosmics pin it several times better than the collision tracks alone,
and without the frame constraints the overall rotation/translation is not determined at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as la

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from b2luca.alignment import Assembler  # noqa: E402
from b2luca.alignment.constraints import frame_constraints, rigid_motion_jacobian, vxd_labels  # noqa: E402
from b2luca.reco.geometry import nominal_geometry  # noqa: E402
from b2luca.reco.measurements import Constants  # noqa: E402
from b2luca.reco.track_model import BeamSpotConstraint  # noqa: E402
from b2luca.sim.simulate import simulate_sample  # noqa: E402
from b2luca.sim.truth import make_truth  # noqa: E402


@pytest.fixture(scope="module")
def samples():
    import calibrations.vxdcdc_alignment as cal

    g = nominal_geometry()
    truth = make_truth(11, g)
    const = Constants.nominal(g)
    const.cdc_t0 = truth.cdc_t0.copy()
    bs = BeamSpotConstraint((0.0, 0.0), (0.01, 0.0002), cal.BEAM_SPOT_LABELS)
    recs = {}
    for tag, n in (("cosmic_calib", 300), ("mumu_tight_or_highm_calib", 400)):
        raw = simulate_sample(tag, n, np.random.default_rng(1), truth, g).raw
        raw = {t: {**c, "gevent": c["event"] - 1} for t, c in raw.items()}
        recs[tag], used, _ = cal.mille_records(raw, const, dict(cal.settings.expert_config), tag, beam_spot=bs)
        assert used > 0.6 * n * (1 if tag == "cosmic_calib" else 2)
    return g, cal, recs


def _modes(g, cal, beam: bool) -> list[dict[int, float]]:
    """Layer-level modes as {label: coefficient} (shifts in mm, rotations x 50 mm, CDC dphi x 500 mm)."""
    a = rigid_motion_jacobian(g)
    vl = vxd_labels(g)
    cols = []
    for layer in range(1, 7):
        sens = np.flatnonzero(g.layer == layer)
        for k in range(6):
            cols.append({int(vl[s, j]): a[s, j, k] * (1.0 if k < 3 else 50.0) for s in sens for j in range(6)})
    cdc = cal.CDC_LABEL_BASE + np.arange(g.n_cdc_layers)[:, None] * 10 + np.arange(1, 4)
    for k in range(3):
        for shape in (np.ones(g.n_cdc_layers), np.linspace(-1, 1, g.n_cdc_layers)):
            cols.append({int(cdc[i, k]): shape[i] * (1.0 if k < 2 else 500.0) for i in range(g.n_cdc_layers)})
    if beam:
        cols += [{lab: 1.0} for lab in cal.BEAM_SPOT_LABELS]
    return cols


def _mode_errors(g, cal, recs, constraints: bool, beam: bool = True) -> np.ndarray:
    """Eigenvalues (ascending) of C on the layer-level modes (on the constraints' null space)."""
    asm = Assembler()
    for r in recs:
        asm.add(r)
    gs = asm.finish()
    pos = {int(lab): i for i, lab in enumerate(gs.labels)}
    cols = _modes(g, cal, beam)
    M = np.zeros((gs.labels.size, len(cols)))
    for c, v in enumerate(cols):
        for lab, x in v.items():
            if lab in pos:
                M[pos[lab], c] = x
    C = M.T @ (gs.C @ M)
    if constraints:
        A = np.zeros((6, gs.labels.size))
        for i, con in enumerate(frame_constraints(g)):
            for lab, f in zip(con.labels, con.factors):
                A[i, pos[int(lab)]] = f
        Z = la.null_space(A @ M)
        C = Z.T @ C @ Z
    return np.linalg.eigvalsh(C)


def test_constraints_and_cosmics_pin_the_weak_modes(samples):
    g, cal, recs = samples
    both = [recs["cosmic_calib"], recs["mumu_tight_or_highm_calib"]]
    lam = _mode_errors(g, cal, both, constraints=True)
    worst = 1e3 / np.sqrt(lam[0])  # um (mm-equivalent mode norm)
    assert lam[0] > 0 and worst < 20.0, worst
    # without the frame constraints the overall motion is free: a (numerically) zero eigenvalue
    free = _mode_errors(g, cal, both, constraints=False)
    assert free[0] < 1e-2 * lam[0], (free[:4], lam[0])
    # without the cosmics (collision tracks + beam spot only) the worst mode is several times weaker
    ip_only = _mode_errors(g, cal, [recs["mumu_tight_or_highm_calib"]], constraints=True)
    assert 1e3 / np.sqrt(ip_only[0]) > 2.0 * worst, (1e3 / np.sqrt(ip_only[0]), worst)
