"""Time-dependent labels, intervals, configuration parsing and jump finding (b2luca.alignment.timedep)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import records_from_dense
from b2luca.alignment.errors import TimedepConfigError
from b2luca.alignment.labels import INTERVAL_LABEL_STRIDE, interval_label, split_interval_label
from b2luca.alignment.timedep import (LabelTranslator, TimedepPart, find_jumps, interval_of, interval_ranges,
                                      parse_timedep)

PARTS = ("PXD", "SVD", "CDC")


def test_parse_basf2_format_and_payload_boundaries():
    cfg = {"timedep": [[["PXD"], [[0, 7, 26], [0, 5, 26]]], [["CDC"], [[0, 9, 26]]]],
           "payload_boundaries": [[26, 3]]}
    parts = {t.part: t.boundaries for t in parse_timedep(cfg, PARTS)}
    assert parts == {"PXD": ((26, 3), (26, 5), (26, 7)), "SVD": ((26, 3),), "CDC": ((26, 3), (26, 9))}
    assert parse_timedep({}, PARTS) == []


def test_parse_reports_every_problem_naming_the_key():
    cfg = {"timedep": [[["PXD", "TOP"], [[1, 5, 26], [0, 6]]], "junk"], "payload_boundaries": [[26]]}
    with pytest.raises(TimedepConfigError) as err:
        parse_timedep(cfg, PARTS, source="VXDCDCAlignment")
    lines = str(err.value).splitlines()
    assert len(lines) == 5, lines
    assert all(line.startswith("VXDCDCAlignment: expert_config key ") for line in lines)
    text = str(err.value)
    for needle in ("'timedep'[0]: unknown part(s) ['TOP']", "'timedep'[0][1][0]: event 1 != 0",
                   "'timedep'[0][1][1]: expected [event, run, exp]", "'timedep'[1]: expected",
                   "'payload_boundaries'[0]: expected [exp, run]"):
        assert needle in text


def test_intervals_and_iov_ranges():
    b = [(26, 5), (26, 9)]
    assert [interval_of(b, (26, r)) for r in (1, 4, 5, 8, 9, 20)] == [0, 0, 1, 1, 2, 2]
    assert interval_ranges(b, (26, 1)) == [((26, 1), (26, 4)), ((26, 5), (26, 8)), ((26, 9), None)]
    assert interval_ranges(b, (26, 6)) == [((26, 6), (26, 8)), ((26, 9), None)]  # boundary before the start: ignored
    assert interval_ranges([(27, 0)], (26, 1)) == [((26, 1), (26, -1)), ((27, 0), None)]


def test_interval_labels_roundtrip_and_range():
    lab = np.array([11, 1_000_553])
    k = np.array([0, 3])
    assert split_interval_label(interval_label(lab, k))[0].tolist() == lab.tolist()
    assert split_interval_label(interval_label(lab, k))[1].tolist() == k.tolist()
    with pytest.raises(ValueError):
        interval_label(np.array([INTERVAL_LABEL_STRIDE]), np.array([1]))


def test_translator_maps_only_time_dependent_labels():
    tr = LabelTranslator({"PXD": np.array([11, 12]), "SVD": np.array([21, 22]), "CDC": np.array([31])},
                         [TimedepPart("PXD", ((26, 5),))])
    labels = np.array([11, 21, 12, 31])
    assert tr.translate(labels, (26, 4)).tolist() == labels.tolist()
    assert tr.translate(labels, (26, 5)).tolist() == [11 + INTERVAL_LABEL_STRIDE, 21, 12 + INTERVAL_LABEL_STRIDE, 31]
    assert sorted(tr.all_labels(np.array([11, 12, 21])).tolist()) == sorted(
        [11, 12, 21, 11 + INTERVAL_LABEL_STRIDE, 12 + INTERVAL_LABEL_STRIDE])
    recs = records_from_dense(np.zeros(2), np.ones(2), np.ones((2, 1)), np.array([[11, 21], [12, 31]]),
                              np.ones((2, 2)), np.array([0, 2]))
    moved = tr.translate_records(recs, (26, 6))
    assert sorted(moved.glb_label.tolist()) == sorted([11 + INTERVAL_LABEL_STRIDE, 21, 12 + INTERVAL_LABEL_STRIDE, 31])
    assert recs.glb_label.tolist() != moved.glb_label.tolist()  # a copy; the input is unchanged
    with pytest.raises(TimedepConfigError, match="share label"):
        LabelTranslator({"VXD": np.array([11, 21]), "PXD": np.array([11])},
                        [TimedepPart("VXD", ((26, 5),)), TimedepPart("PXD", ((26, 6),))])


def test_find_jumps_threshold_and_missing_runs():
    runs = [(26, r) for r in range(1, 7)]
    vals = np.array([[0, 0, np.nan], [1, 0, np.nan], [np.nan] * 3, [30, 1, np.nan], [31, 0, np.nan], [30, 0, np.nan]])
    errs = np.where(np.isnan(vals), np.nan, 1.0)
    jumps = find_jumps(runs, vals, errs, k_sigma=5.0)
    assert [j[0] for j in jumps] == [(26, 4)]  # run 3 unmeasured: run 4 is compared with run 2
    assert jumps[0][1] == pytest.approx(29.0) and jumps[0][2] == pytest.approx(29 / np.sqrt(2))
    assert find_jumps(runs, vals, errs, k_sigma=5.0, min_jump=40.0) == []
    assert find_jumps(runs, vals, errs * 10, k_sigma=5.0) == []
