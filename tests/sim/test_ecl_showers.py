"""The detailed ECL shower model (ecl_full) and the radmumu_calib sample of the toy detector."""

from __future__ import annotations

import numpy as np

from b2luca.reco.geometry import ECL_NPHI, ECL_NTHETA, ECL_THETA_MAX, ECL_THETA_MIN
from b2luca.sim import ecl_showers as S
from b2luca.sim import make_truth, simulate_sample
from b2luca.sim import simulate as simulate_module


def _showers(kind: int, n: int, p: float, seed: int):
    """n tracks of one kind at normal incidence (omega = 0), one per event, entering a crystal centre."""
    theta = np.full(n, ECL_THETA_MIN + (ECL_NTHETA // 2 + 0.5) * (ECL_THETA_MAX - ECL_THETA_MIN) / ECL_NTHETA)
    phi = np.full(n, (10.5) * 2 * np.pi / ECL_NPHI)
    h = np.zeros((n, 5))
    hits = S.ecl_full_hits(np.arange(n), np.full(n, kind), np.full(n, p), h, theta, phi, np.ones(ECL_NTHETA * ECL_NPHI),
                           np.random.default_rng(seed))
    return hits


def test_muon_deposit_is_a_mip_and_pions_spread_wider():
    n, p = 4000, 1.0
    mu = _showers(S.MUON, n, p, 1)
    pi = _showers(S.PION, n, p, 2)
    # expected energy in the window per muon: MIP (dE/dx x depth, Gamma mean 1) + delta rays + background
    e_mip = S.DEDX * S.CRYSTAL_DEPTH
    expected = e_mip + 8 * 0.3 * 0.0004 + 49 * S.BKG_PROBABILITY * S.BKG_MEAN
    total_mu = np.bincount(mu["event"], mu["amplitude"], minlength=n)
    # stored hits are above 0.8 MeV, so a few tenths of an MeV of background are lost per track
    assert abs(total_mu.mean() - expected) < 5 * total_mu.std() / np.sqrt(n) + 0.004
    centre = ((ECL_NTHETA // 2) * ECL_NPHI + 10)
    frac_mu = np.bincount(mu["event"], np.where(mu["crystal"] == centre, mu["amplitude"], 0), minlength=n) / total_mu
    assert np.median(frac_mu) > 0.7  # the ionisation track stays in the entry crystal at normal incidence
    n5_mu = np.bincount(mu["event"], mu["amplitude"] > 0.005, minlength=n)
    n5_pi = np.bincount(pi["event"], pi["amplitude"] > 0.005, minlength=n)
    assert n5_pi.mean() > n5_mu.mean() + 10 * np.hypot(n5_pi.std(), n5_mu.std()) / np.sqrt(n)
    # about 1 - exp(-300/390) = 54 % of the pions interact: their window energy exceeds a muon's 99th percentile
    total_pi = np.bincount(pi["event"], pi["amplitude"], minlength=n)
    frac_big = np.mean(total_pi > np.quantile(total_mu, 0.99))
    p_int = 1 - np.exp(-S.CRYSTAL_DEPTH / S.LAMBDA_I)
    assert 0.5 * p_int < frac_big < p_int + 0.05


def test_slow_muons_range_out():
    n = 2000
    slow = _showers(S.MUON, n, 0.15, 3)  # kinetic energy 0.08 GeV < MIP deposit 0.17 GeV
    total = np.bincount(slow["event"], slow["amplitude"], minlength=n)
    ke = np.sqrt(0.15 ** 2 + S.MASS_MU ** 2) - S.MASS_MU
    assert np.median(total) < ke + 0.03


def test_ecl_full_changes_no_existing_array(monkeypatch):
    truth = make_truth(5)
    with_full = simulate_sample("hadron_calib", 150, np.random.default_rng(9), truth, experiment=26, run=1)
    monkeypatch.setattr(simulate_module, "ECL_FULL_TAGS", ())
    without = simulate_sample("hadron_calib", 150, np.random.default_rng(9), truth, experiment=26, run=1)
    assert "ecl_full" in with_full.raw and "ecl_full" not in without.raw
    assert with_full.raw["ecl_full"]["event"].size > 0
    for tree, cols in without.raw.items():
        for branch, values in cols.items():
            np.testing.assert_array_equal(with_full.raw[tree][branch], values, err_msg=f"{tree}.{branch}")


def test_radmumu_sample_has_low_momentum_muon_pairs():
    truth = make_truth(5)
    res = simulate_sample("radmumu_calib", 500, np.random.default_rng(4), truth, experiment=26, run=1)
    assert np.all(res.tracks.kind == 0) and len(res.tracks) == 1000
    q = np.sign(res.tracks.h[:, 2]).reshape(-1, 2)
    assert np.all(q.sum(axis=1) == 0)
    assert np.mean(res.tracks.p < 0.6) > 0.2
    assert res.raw["ecl_full"]["event"].size > 0
