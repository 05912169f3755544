"""Leaving measurements out of Mille records (b2luca.alignment.select)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import AlignmentProblem, records_from_dense
from b2luca.alignment.assemble import Assembler
from b2luca.alignment.problem import assemble
from b2luca.alignment.select import drop_rows, rows_with_labels


def _records(rng, n=30, rows=8):
    value = rng.normal(0, 1, n * rows)
    sigma = rng.uniform(0.5, 2, n * rows)
    local = rng.normal(0, 1, (n * rows, 2))
    lab = rng.choice([11, 12, 21, 22, 31], (n * rows, 1))
    der = rng.normal(0, 1, (n * rows, 1))
    return (value, sigma, local, lab, der), np.arange(n + 1) * rows


def _system(recs):
    gs = assemble(AlignmentProblem(records=[recs]), lambda: Assembler(), {})
    return gs.labels, gs.C.toarray(), gs.b


def test_dropping_rows_equals_records_built_without_them():
    rng = np.random.default_rng(4)
    dense, ptr = _records(rng)
    recs = records_from_dense(*dense, ptr)
    drop = rows_with_labels(recs, np.array([31]))
    assert drop.sum() == np.sum(dense[3] == 31)
    keep = ~drop
    counts = np.add.reduceat(keep.astype(int), ptr[:-1])
    expected = records_from_dense(*(a[keep] for a in dense), np.r_[0, np.cumsum(counts)])
    got = drop_rows(recs, drop)
    for name in ("rec_ptr", "value", "sigma", "loc_meas", "loc_index", "loc_der", "glb_meas", "glb_label", "glb_der"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    la, ca, ba = _system(got)
    assert 31 not in la
    lb, cb, bb = _system(expected)
    np.testing.assert_allclose(ca, cb)
    np.testing.assert_allclose(ba, bb)


def test_nothing_to_drop_and_bad_mask():
    rng = np.random.default_rng(5)
    recs = records_from_dense(*_records(rng)[0], _records(rng)[1])
    assert drop_rows(recs, np.zeros(recs.n_meas, bool)) is recs
    with pytest.raises(ValueError, match="measurements"):
        drop_rows(recs, np.zeros(3, bool))
