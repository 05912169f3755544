"""truth_in_frame with the frame of another interval (time-dependent alignment)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment.frame import truth_in_frame
from b2luca.reco.geometry import nominal_geometry
from b2luca.sim.truth import make_truth

G = nominal_geometry()


def test_a_later_interval_keeps_the_frame_of_the_first():
    t = make_truth(7, G)
    moved = t.vxd_params.copy()
    local = np.einsum("sji,j->si", G.rot, [0.030, 0.0, 0.0])  # (du, dv, dw) of a 30 um move in global x
    moved[G.is_pxd, :3] += local[G.is_pxd]  # the PXD moves in the second interval
    first = truth_in_frame(t.vxd_params, t.cdc_params, geom=G)
    own = truth_in_frame(moved, t.cdc_params, geom=G)
    tied = truth_in_frame(moved, t.cdc_params, geom=G, motion=(first.translation, first.rotation))
    # in the first interval's frame the SVD is where it was, and the PXD carries the whole movement
    np.testing.assert_allclose(tied.vxd[~G.is_pxd], first.vxd[~G.is_pxd], atol=1e-15)
    np.testing.assert_allclose(tied.vxd[G.is_pxd, :3] - first.vxd[G.is_pxd, :3], local[G.is_pxd], atol=1e-12)
    np.testing.assert_allclose(tied.cdc, first.cdc)
    # its own frame would move the SVD too: the overall translation of the movement (~30 um x 40/212)
    assert np.abs(own.vxd[~G.is_pxd, :3] - first.vxd[~G.is_pxd, :3]).max() > 0.003
    with pytest.raises(ValueError, match="motion"):
        truth_in_frame(moved, t.cdc_params, geom=G, motion=(np.zeros(2), np.zeros(3)))
