"""The update/veto rule: statistics against known truth, each outcome, and promote_payloads' production path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from b2luca.conditions import GlobalTag, LocalDatabase
from b2luca.conditions.promote import promote_payloads, result_entries
from b2luca.conditions.rule import NOT_UPLOADED, UPLOADED, VETOED, UploadRule, compare, decide, rule_for, significance
from b2luca.iov import ExpRun, IoV


def test_significance_is_the_gaussian_equivalent_of_the_chi2_probability():
    for chi2, ndf in [(9.0, 1), (130.0, 100), (400.0, 292)]:
        p = stats.chi2.sf(chi2, ndf)
        assert significance(chi2, ndf) == pytest.approx(stats.norm.isf(p), rel=1e-9) or p >= 0.5
    assert significance(50.0, 100) == 0.0  # smaller than the errors alone explain
    huge = significance(2e5, 172)  # beyond double precision: finite and monotonic
    assert np.isfinite(huge) and huge > significance(1e4, 172) > 30


def test_no_change_is_rarely_significant_and_a_one_sigma_shift_always_is():
    """Against truth: constants unchanged up to their errors stay below 3 sigma in ~99.87 % of the trials;
    a common shift of one error on 200 elements is always significant."""
    rng = np.random.default_rng(2026)
    old = {"t0": np.zeros(200)}
    errors = rng.uniform(0.2, 0.6, 200)
    trials = 2000
    z_null = np.array([compare({"t0": rng.normal(0, errors), "t0_error": errors}, old)["significance"]
                       for _ in range(trials)])
    expected = stats.norm.sf(3.0)  # 0.00135
    tolerance = 4 * np.sqrt(expected * (1 - expected) / trials)
    assert abs(np.mean(z_null >= 3.0) - expected) < tolerance + 1e-3
    assert abs(np.mean(z_null == 0.0) - 0.5) < 4 * np.sqrt(0.25 / trials)  # half the trials below the median
    z_shift = [compare({"t0": rng.normal(errors, errors), "t0_error": errors}, old)["significance"] for _ in range(50)]
    assert min(z_shift) > 5


def test_a_vector_with_a_covariance_matrix_is_compared_with_it():
    cov = np.array([[4.0, 3.0], [3.0, 4.0]])  # strongly correlated errors of 2
    old = {"position": np.zeros(2)}
    along = compare({"position": np.array([3.0, 3.0]), "position_error": cov}, old)  # along the correlation
    across = compare({"position": np.array([3.0, -3.0]), "position_error": cov}, old)
    assert along["chi2"] == pytest.approx(18 / 7) and across["chi2"] == pytest.approx(18.0)
    assert along["n"] == 2 and along["max_error"] == pytest.approx(2.0) and along["max_change"] == 3.0
    assert compare({"position": np.ones(2), "position_error": -cov}, old) is None  # not a covariance


def _payloads(shift: float, error: float = 0.1, n: int = 50):
    rng = np.random.default_rng(1)
    old = {"offset": rng.normal(size=n)}
    new = {"offset": old["offset"] + shift + rng.normal(0, error, n), "offset_error": np.full(n, error),
           "n_hits": np.full(n, 100)}
    new["offset_error"][3] = np.nan  # an element the calibration could not determine
    return new, old


def test_each_outcome():
    rule = UploadRule(min_significance=3.0, max_change=1.0, max_error=0.5)
    assert decide("X", *_payloads(0.0), rule).outcome == NOT_UPLOADED
    up = decide("X", *_payloads(0.3), rule)
    assert up.outcome == UPLOADED and up.figures["n"] == 49 and up.figures["compared"] == ["offset"]
    big = decide("X", *_payloads(2.0), rule)
    assert big.outcome == VETOED and "max |change|" in big.reason and "> 1" in big.reason
    vague = decide("X", *_payloads(0.0, error=0.8), rule)
    assert vague.outcome == VETOED and "max error" in vague.reason
    assert decide("X", {"a": np.ones(3)}, None, rule).outcome == UPLOADED  # nothing in force
    assert decide("X", {"mask": np.ones(3)}, {"mask": np.ones(3)}, rule, same_content=True).outcome == NOT_UPLOADED
    assert decide("X", {"mask": np.ones(3)}, {"mask": np.zeros(3)}, rule).outcome == UPLOADED
    assert rule_for({"default": {"min_significance": 2}, "X": {"max_change": 3}}, "X") == UploadRule(2, None, 3, None)
    assert rule_for({}, "Y") == UploadRule()


def _bucket_cfg(tmp_path: Path, upload: dict) -> SimpleNamespace:
    conditions = SimpleNamespace(directory=tmp_path / "conditions", database_chain=("nominal",), backend="local",
                                 prompt_global_tag="prompt", central=None)
    return SimpleNamespace(path=tmp_path / "bucket.yaml", name="t", conditions=conditions,
                           calibrations=SimpleNamespace(upload=upload),
                           bucket=SimpleNamespace(experiment=3, first_run=10), prompt_iov=IoV(3, 10, -1, -1))


@pytest.mark.parametrize("upload, outcome", [({}, UPLOADED), ({"Cal": {"min_significance": 1e9}}, NOT_UPLOADED),
                                             ({"default": {"max_change": 0.01}}, VETOED)])
def test_promote_payloads_judges_against_the_chain_and_stores_only_what_passes(tmp_path, upload, outcome):
    cfg = _bucket_cfg(tmp_path, upload)
    new, old = _payloads(0.5)
    GlobalTag.create(cfg.conditions.directory, "nominal").store("Offsets", old, IoV(0, 0, -1, -1))
    source = LocalDatabase(tmp_path / "output").create()
    source.store("Offsets", {"offset": np.zeros(50)}, IoV(3, 10, -1, -1))  # superseded by the next line
    source.store("Offsets", new, IoV(3, 10, -1, -1))
    prompt = GlobalTag.create(cfg.conditions.directory, "prompt")
    result = promote_payloads(cfg, "Cal", source, prompt)
    assert [d.outcome for d in result.decisions] == [outcome]
    assert result.vetoed is (outcome == VETOED)
    stored = prompt.db.entries()
    if outcome == UPLOADED:
        assert len(stored) == 1 and np.array_equal(prompt.db.read(stored[0])["offset"], new["offset"])
        assert result.payloads[0]["new"] and result.uploads[0]["name"] == "Offsets"
        assert promote_payloads(cfg, "Cal", source, prompt).payloads[0]["new"] is False  # rerun: nothing new
    else:
        assert stored == [] and result.uploads == []
    event = result.event("local", "prompt")
    assert event["rule"].startswith("upload when significance >=") and event["decisions"][0]["outcome"] == outcome


def test_time_dependent_result_is_promoted_with_one_iov_per_interval(tmp_path):
    cfg = _bucket_cfg(tmp_path, {})
    new, old = _payloads(0.5)
    moved = {k: v + 1.0 if k == "offset" else v for k, v in new.items()}
    GlobalTag.create(cfg.conditions.directory, "nominal").store("Offsets", old, IoV(0, 0, -1, -1))
    source = LocalDatabase(tmp_path / "output").create()
    source.store("Offsets", {"offset": np.zeros(50)}, IoV(3, 10, -1, -1))  # an earlier, single-IoV result
    source.store("Offsets", new, IoV(3, 10, 3, 14))
    source.store("Offsets", moved, IoV(3, 15, -1, -1))
    prompt = GlobalTag.create(cfg.conditions.directory, "prompt")
    result = promote_payloads(cfg, "Cal", source, prompt)
    assert [d.outcome for d in result.decisions] == [UPLOADED, UPLOADED]
    assert [p["iov"] for p in result.payloads] == [str(IoV(3, 10, 3, 14)), str(IoV(3, 15, -1, -1))]
    assert np.array_equal(prompt.db.read("Offsets", ExpRun(3, 12))["offset"], new["offset"])
    assert np.array_equal(prompt.db.read("Offsets", ExpRun(3, 15))["offset"], moved["offset"])
    # intervals that do not reach back to the bucket's first run are not a result: the last line alone is
    other = LocalDatabase(tmp_path / "other").create()
    other.store("Offsets", new, IoV(3, 12, 3, 14))
    other.store("Offsets", moved, IoV(3, 15, -1, -1))
    assert [e.iov for e in result_entries(other.entries(), ExpRun(3, 10))["Offsets"]] == [IoV(3, 15, -1, -1)]
