"""The track fit's split: once most tracks of a chunk have converged, the others are fitted on alone."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.reco import fit as F
from b2luca.reco.geometry import nominal_geometry

GEOM = nominal_geometry()


@pytest.fixture(scope="module")
def sample(tmp_path_factory, simulated_measurements):
    return simulated_measurements(tmp_path_factory.mktemp("split"), 11, (("cosmic_calib", 120), ("hadron_calib", 120)), 3)


@pytest.mark.parametrize("tag", ["cosmic_calib", "hadron_calib"])
def test_split_fit_gives_the_unsplit_results(sample, tag, monkeypatch):
    c, all_meas = sample
    meas = all_meas[tag]
    calls = []
    resume = F._resume_stragglers

    def spy(r, *args):
        calls.append(int((~r["done"]).sum()))
        resume(r, *args)

    monkeypatch.setattr(F, "_resume_stragglers", spy)
    split = F.fit_tracks(meas, c, GEOM, n_iter=4, chunk_tracks=len(meas.track_key) // 2 + 1)
    assert calls and all(n > 0 for n in calls)  # the split happened (and only where tracks were left)
    monkeypatch.setattr(F, "_SPLIT_AT", None)
    whole = F.fit_tracks(meas, c, GEOM, n_iter=4, chunk_tracks=len(meas.track_key) // 2 + 1)
    err = np.sqrt(np.einsum("tii->ti", whole.cov))
    assert np.array_equal(split.ok, whole.ok)
    assert np.max(np.abs(split.params - whole.params) / err) < 1e-6
    assert np.max(np.abs(split.kinks - whole.kinks) / whole.kink_sigma) < 1e-6
    assert np.allclose(split.cov, whole.cov, rtol=1e-6, atol=0)
    assert np.max(np.abs(split.chi2 - whole.chi2)) < 1e-5  # unconverged tracks differ in round-off only
    fin = np.isfinite(whole.residual)
    assert np.array_equal(np.isfinite(split.residual), fin)
    assert np.max(np.abs(split.residual - whole.residual)[fin] / meas.sigma[fin]) < 1e-6
    # round-off relative to the column's largest derivative (a kink column can be a cancellation of large terms)
    col_scale = np.abs(whole.local_derivs).max(axis=0)
    assert np.all(np.abs(split.local_derivs - whole.local_derivs) <= 1e-6 * np.abs(whole.local_derivs) + 1e-12 * col_scale)
    assert np.allclose(split.global_derivs, whole.global_derivs, rtol=1e-6, atol=1e-12)
    assert np.array_equal(split.global_labels, whole.global_labels)
