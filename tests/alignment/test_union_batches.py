"""The batched sums of the assembly for records of many blocks and many local parameters (the VXD+CDC
alignment's records): the same normal equations as record by record."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import assemble as asm_mod
from b2luca.alignment import fast_path
from b2luca.alignment._arrays import outer_segsum
from b2luca.alignment.local_fit import _record_grams
from b2luca.alignment.toy import barrel_geometry, generate_tracks


def _system(records, monkeypatch, min_k: int, columns: int = 384):
    monkeypatch.setattr(asm_mod, "UNION_MIN_K", min_k)
    monkeypatch.setattr(fast_path, "COMPILED", False)  # both sides on the numpy path
    monkeypatch.setattr(asm_mod, "UNION_COLUMNS", columns)
    asm = asm_mod.Assembler()
    for recs in records:
        asm.add(recs)
    return asm.finish()


@pytest.mark.parametrize("columns", [8, 64, 4096])
def test_union_batches_give_the_record_by_record_system(monkeypatch, columns):
    geo = barrel_geometry(240, n_layers=8)
    rng = np.random.default_rng(11)
    truth = np.tile([0.1, 0.1, 0.1, 5e-4, 5e-4, 5e-4], geo.n_sensors) * rng.normal(size=6 * geo.n_sensors)
    records = [generate_tracks(geo, 400, truth, rng) for _ in range(2)]
    ref = _system(records, monkeypatch, min_k=1 << 30)  # every record by itself (the old path)
    new = _system(records, monkeypatch, min_k=0, columns=columns)  # every record in union batches
    assert np.array_equal(ref.labels, new.labels)
    # the same pattern (no block pair that no record has), the same values to round-off
    assert (abs(ref.C) > 0).astype(int).sum() == (abs(new.C) > 0).astype(int).sum()
    assert ((abs(ref.C) > 0) != (abs(new.C) > 0)).nnz == 0
    scale = abs(ref.C).max()
    assert abs(ref.C - new.C).max() <= 1e-13 * scale
    assert np.array_equal(ref.b, new.b) and ref.chi2_0 == new.chi2_0


def test_union_batches_change_the_sums(monkeypatch):
    """The check above can fail: dropping one record's product from a batch changes the matrix."""
    geo = barrel_geometry(240, n_layers=8)
    rng = np.random.default_rng(12)
    records = [generate_tracks(geo, 200, np.zeros(6 * geo.n_sensors), rng)]
    ref = _system(records, monkeypatch, min_k=1 << 30)
    real = asm_mod._add_union_batches

    def lose_one(tot, uk, wide, bmem):
        kf, M, bl = wide[0]
        M = M.copy()
        M[0] = 0.0
        real(tot, uk, [(kf, M, bl)] + wide[1:], bmem)

    monkeypatch.setattr(asm_mod, "_add_union_batches", lose_one)
    new = _system(records, monkeypatch, min_k=0)
    assert abs(ref.C - new.C).max() > 1e-6 * abs(ref.C).max()


def test_record_grams_equal_the_sum_of_outer_products():
    rng = np.random.default_rng(3)
    n_r = rng.integers(1, 30, size=40)
    rec_ptr = np.concatenate([[0], np.cumsum(n_r)])
    nmeas, qmax = int(rec_ptr[-1]), 9
    q = rng.integers(0, qmax + 1, size=n_r.size)
    meas_rec = np.repeat(np.arange(n_r.size), n_r)
    a = rng.normal(size=(nmeas, qmax)) * (np.arange(qmax)[None, :] < q[meas_rec][:, None])
    ay = np.concatenate([a, rng.normal(size=(nmeas, 1))], axis=1)
    w = rng.uniform(0.5, 2.0, nmeas)
    order = rng.permutation(n_r.size)
    pos = np.empty(n_r.size, np.int64)
    pos[order] = np.arange(n_r.size)
    ref = outer_segsum(pos[meas_rec], a * w[:, None], ay, n_r.size).reshape(n_r.size, qmax, qmax + 1)
    new = _record_grams(rec_ptr, order, q, w, ay, qmax)
    for k, r in enumerate(order):  # each record's first q columns (and β in the last column)
        qv = q[r]
        assert np.allclose(new[k, :qv, :qv], ref[k, :qv, :qv], rtol=1e-13, atol=1e-12)
        assert np.allclose(new[k, :qv, qmax], ref[k, :qv, qmax], rtol=1e-13, atol=1e-12)
