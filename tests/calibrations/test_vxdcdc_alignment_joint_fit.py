"""VXDCDCAlignment fits all files of a (collection, constants interval) in one call: the records cut back per run
must be those of a fit per file (none lost, none given to another run, event ids that restart per file kept
apart)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import concat_records
from b2luca.alignment.select import split_records
from b2luca.iov import ExpRun
from b2luca.reco.geometry import NOMINAL_BEAMSPOT_SIZE, nominal_geometry
from b2luca.reco.measurements import load_constants
from b2luca.reco.raw import first_events, read_raw
from b2luca.reco.track_model import BeamSpotConstraint


def _halves(raw: dict, n: int) -> list[dict]:
    """The first 2n events of ``raw`` as two files of n events each, the second with its event ids restarting at
    0 (as :func:`read_raw` gives them for a file of its own)."""
    a = first_events(raw, n)
    b = {t: {k: v[(c["gevent"] >= n) & (c["gevent"] < 2 * n)] for k, v in c.items()} for t, c in raw.items()}
    for c in b.values():
        c["gevent"] = c["gevent"] - n
    return [a, b]


@pytest.fixture(scope="module")
def inputs(bucket):
    """(collection, run, raw) of two 'files' per run and collection, runs 1 and 2."""
    out = []
    for name, n in (("mumu_tight_or_highm_calib", 60), ("cosmic_calib", 40)):
        for path, er in bucket.raw_entries(name):
            raw = read_raw([path], ("event", "pxd", "svd", "cdc"))
            out += [(name, (er.exp, er.run), h) for h in _halves(raw, n)]
    return out


def _same(a, b) -> None:
    assert a.n_records == b.n_records and a.n_meas == b.n_meas
    np.testing.assert_array_equal(a.rec_ptr, b.rec_ptr)
    np.testing.assert_array_equal(a.glb_label, b.glb_label)
    np.testing.assert_array_equal(a.glb_meas, b.glb_meas)
    np.testing.assert_array_equal(a.loc_index, b.loc_index)
    np.testing.assert_allclose(a.value, b.value, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a.glb_der, b.glb_der, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a.loc_der, b.loc_der, rtol=1e-6, atol=1e-9)


def test_joint_fit_records_per_run_equal_the_per_file_fits(bucket, script, inputs):
    cal = script("vxdcdc_alignment")
    geom = nominal_geometry()
    cfg = dict(cal.settings.expert_config)
    consts = load_constants(bucket.nominal, ExpRun(26, 1), names=cal.RECO_PAYLOADS)
    bs = BeamSpotConstraint(position=tuple(float(x) for x in consts.beam_position[:2]),
                            size=tuple(float(x) for x in NOMINAL_BEAMSPOT_SIZE[:2]), labels=cal.BEAM_SPOT_LABELS)
    translator = cal.timedep_translator(cfg, geom)
    groups = cal.group_inputs(inputs, translator)
    assert len(groups) == 2  # one per collection: 4 files each, all in one interval
    for g in groups:
        g["records"], _, _, event = cal.track_records(g["raw"], consts, cfg, g["name"], beam_spot=bs)
        g["record_file"] = np.searchsorted(g["offsets"], event, side="right") - 1
    joint = {(name, er): recs for er, recs, name in cal.records_per_run(groups)}
    per_file: dict = {}
    for name, er, raw in inputs:
        recs, _, _ = cal.mille_records(raw, consts, cfg, name, beam_spot=bs)
        per_file.setdefault((name, er), []).append(recs)
    assert set(joint) == set(per_file) == {(n, (26, r)) for n in ("mumu_tight_or_highm_calib", "cosmic_calib")
                                           for r in (1, 2)}
    for key, parts in per_file.items():
        _same(joint[key], concat_records(parts))
    # the per-run monitor on the joint fit's records equals the one on the per-file fits' records
    corr = {int(x): 2e-3 for x in np.unique(np.concatenate([r.glb_label for r in joint.values()]))[::5]}
    a = cal.part_trend(cal.records_per_run(groups), corr, cfg, geom)
    b = cal.part_trend([(er, r, name) for (name, er), parts in per_file.items() for r in parts], corr, cfg, geom)
    assert a["runs"] == b["runs"] == [[26, 1], [26, 2]] and set(a["parts"]) == {"PXD", "SVD"}
    for part, tr in a["parts"].items():
        for key in ("shift_um", "error_um"):
            np.testing.assert_allclose(tr[key], b["parts"][part][key], rtol=1e-6, atol=1e-6)
    # the di-muon records are one per event: 2 x 60 events per run, each file's events kept apart
    assert all(joint[("mumu_tight_or_highm_calib", (26, r))].n_records > 60 for r in (1, 2))


def test_split_records_inverts_concat_also_for_unsorted_entries():
    from b2luca.alignment import records_from_dense

    rng = np.random.default_rng(3)
    parts = []
    for n_rec in (3, 0, 5):
        ptr = np.r_[0, np.cumsum(rng.integers(2, 6, n_rec))]
        m = int(ptr[-1])
        loc = rng.normal(size=(m, 4)) * (rng.random((m, 4)) < 0.6)
        lab = rng.integers(1, 40, (m, 3))
        parts.append(records_from_dense(rng.normal(size=m), np.full(m, 0.1), loc, lab, rng.normal(size=(m, 3)), ptr))
    whole = concat_records(parts)
    bounds = np.cumsum([0] + [p.n_records for p in parts])
    for a, b in zip(split_records(whole, bounds), parts):
        _same(a, b)
    rev = np.arange(whole.glb_meas.size)[::-1]  # entries in another order: each piece gets its own entries
    shuffled = concat_records([whole])
    shuffled.glb_meas, shuffled.glb_label, shuffled.glb_der = whole.glb_meas[rev], whole.glb_label[rev], whole.glb_der[rev]
    for a, b in zip(split_records(shuffled, bounds), parts):
        order = np.lexsort((b.glb_label, b.glb_meas))
        got = np.lexsort((a.glb_label, a.glb_meas))
        np.testing.assert_array_equal(a.glb_meas[got], b.glb_meas[order])
        np.testing.assert_array_equal(a.glb_label[got], b.glb_label[order])
    with pytest.raises(ValueError, match="bounds"):
        split_records(whole, bounds[:-1])


def test_the_outer_iterations_refit_from_the_previous_fit(bucket, script, inputs, monkeypatch):
    """track_records(warm=state) stores its fit in ``state`` and the next call starts from it: with unchanged
    constants it evaluates far fewer rows and gives the same records (fit_iterations keeps one state per group)."""
    from b2luca.reco import fit as F

    cal = script("vxdcdc_alignment")
    geom = nominal_geometry()
    cfg = dict(cal.settings.expert_config)
    consts = load_constants(bucket.nominal, ExpRun(26, 1), names=cal.RECO_PAYLOADS)
    group = cal.group_inputs(inputs, cal.timedep_translator(cfg, geom))[0]
    rows = {"n": 0}
    real = F._Predictor.__call__

    def counting(self, h, n_iter=2, update=False):
        rows["n"] += h.shape[0] if update else 0
        return real(self, h, n_iter, update)

    monkeypatch.setattr(F._Predictor, "__call__", counting)
    state: dict = {}
    first = cal.track_records(group["raw"], consts, cfg, group["name"], warm=state)[0]
    cold, rows["n"] = rows["n"], 0
    assert {"track_key", "params", "kinks"} <= set(state)
    again = cal.track_records(group["raw"], consts, cfg, group["name"], warm=state)[0]
    assert rows["n"] < 0.6 * cold, (rows["n"], cold)  # every track starts at its converged fit
    assert again.n_records == first.n_records
    np.testing.assert_allclose(again.value, first.value, rtol=1e-4, atol=1e-6)
