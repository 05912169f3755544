"""The GAN validation's pull study: fits reused between background modes give the full fits' pulls."""

from __future__ import annotations

import numpy as np

from b2luca.reco.fit import fit_tracks
from b2luca.sim import pxd_pulls
from b2luca.sim.generate import MASS


def test_reusing_the_fits_without_background_gives_the_pulls_of_fitting_every_track(monkeypatch):
    reused = pxd_pulls.track_pulls(120, 11, None, modes=("simulated", "none"))
    calls: list[int] = []

    def fit_all(meas, reference, constants, geom):  # the plain path: every track of every mode fitted
        calls.append(meas.n_tracks)
        full = fit_tracks(meas, constants, geom, mass=MASS[2])
        return pxd_pulls._Fit(full.params, full.cov, full.chi2, full.ndf, full.ok)

    monkeypatch.setattr(pxd_pulls, "_fit_reusing", fit_all)
    plain = pxd_pulls.track_pulls(120, 11, None, modes=("simulated", "none"))
    assert len(calls) == 2 and list(reused) == ["simulated", "none"]
    for mode in plain:
        for key in ("pt", "d0", "z0"):
            np.testing.assert_array_equal(reused[mode][key], plain[mode][key], err_msg=f"{mode} {key}")
    # the background changes some tracks, not all: the reuse does save fits and does see the changes
    assert not np.array_equal(plain["simulated"]["d0"][:50], plain["none"]["d0"][:50])


def test_changed_tracks_finds_the_candidates_whose_rows_differ():
    from b2luca.reco.measurements import build_measurements, Constants
    from b2luca.reco.geometry import nominal_geometry
    from b2luca.sim.simulate import simulate_sample
    from b2luca.sim.truth import make_truth, truth_payloads

    geom = nominal_geometry()
    truth = make_truth(3, geom)
    constants = Constants.from_payloads(truth_payloads(truth, geom), geom)
    raw = simulate_sample("hadron_calib", 20, np.random.default_rng(3), truth, geom).raw
    for tree in raw.values():
        if "event" in tree:
            tree["gevent"] = tree["event"]
    meas = build_measurements(raw, constants, geom)
    assert pxd_pulls.changed_tracks(meas, meas).size == 0
    moved = np.array(meas.m, copy=True)
    rows = np.flatnonzero(np.isin(meas.track, [1, 4]))[:3]
    moved[rows] += 0.01
    import dataclasses

    assert pxd_pulls.changed_tracks(dataclasses.replace(meas, m=moved), meas).tolist() == sorted(set(meas.track[rows]))
    fewer = dataclasses.replace(meas, track_key=meas.track_key[:-1])
    assert pxd_pulls.changed_tracks(fewer, meas) is None


def test_simulated_background_on_the_hit_sensors_only_gives_the_pulls_of_the_full_simulation(monkeypatch):
    from b2luca.sim import pxd_overlay

    part = pxd_pulls.track_pulls(120, 12, None, modes=("simulated",))
    full_background = pxd_overlay.pxd_background

    monkeypatch.setattr(pxd_overlay, "pxd_background",
                        lambda rng, n_events, geom, sensors=None: full_background(rng, n_events, geom))
    full = pxd_pulls.track_pulls(120, 12, None, modes=("simulated",))
    for key in ("pt", "d0", "z0"):
        np.testing.assert_array_equal(part["simulated"][key], full["simulated"][key], err_msg=key)


def test_pulls_below_a_pt_are_those_of_fitting_every_track(monkeypatch):
    """The validation fits only tracks below its highest pT bin: the same tracks and pulls there (to the
    round-off of batched linear algebra on other batch shapes, ~1e-9), fewer fits."""
    fitted: list[int] = []
    fit_tracks_all = pxd_pulls.fit_tracks

    def counting(meas, *args, **kwargs):
        fitted.append(meas.n_tracks)
        return fit_tracks_all(meas, *args, **kwargs)

    monkeypatch.setattr(pxd_pulls, "fit_tracks", counting)
    every = pxd_pulls.track_pulls(120, 13, None, modes=("simulated", "none"))
    n_every = sum(fitted)
    fitted.clear()
    low = pxd_pulls.track_pulls(120, 13, None, modes=("simulated", "none"), max_pt=0.6)
    assert sum(fitted) < n_every
    for mode in every:
        sel = every[mode]["pt"] < 0.6
        assert 0 < sel.sum() < sel.size
        np.testing.assert_array_equal(low[mode]["pt"], every[mode]["pt"][sel], err_msg=mode)
        for key in ("d0", "z0"):
            np.testing.assert_allclose(low[mode][key], every[mode][key][sel], rtol=1e-7, atol=1e-7,
                                       err_msg=f"{mode} {key}")
