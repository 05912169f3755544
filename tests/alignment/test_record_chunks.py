"""In-memory record sets are cut into bounded chunks for the data pass: every record used once, same result."""

from __future__ import annotations

import numpy as np

import b2luca.alignment.problem as P
from b2luca.alignment import AlignmentProblem, ParameterSpec, concat_records, solve
from b2luca.alignment.toy import barrel_geometry, generate_tracks


def _records():
    rng = np.random.default_rng(11)
    geo = barrel_geometry(120, n_layers=4)
    truth = rng.normal(0, 0.01, 6 * geo.n_sensors)
    return generate_tracks(geo, 3000, truth, rng)


def test_record_chunks_cover_every_record_once():
    recs = _records()
    chunks = P.record_chunks(recs, 500)
    assert len(chunks) > 10 and all(c.n_meas <= 500 for c in chunks)
    back = concat_records(chunks)
    np.testing.assert_array_equal(back.rec_ptr, recs.rec_ptr)
    np.testing.assert_array_equal(back.value, recs.value)
    np.testing.assert_array_equal(back.glb_label, recs.glb_label)
    np.testing.assert_array_equal(back.loc_meas, recs.loc_meas)
    assert P.record_chunks(recs, recs.n_meas) == [recs]
    big = P.record_chunks(recs, 1)  # smaller than a record: one record per chunk
    assert len(big) == recs.n_records


def test_chunked_pass_gives_the_one_chunk_result(monkeypatch):
    recs = _records()
    labels = np.unique(recs.glb_label)
    spec = {int(x): ParameterSpec(int(x), 0.0, 0.1) for x in labels}  # soft priors: no weak mode left free

    def fit(limit: int):
        monkeypatch.setattr(P, "RECORD_CHUNK_MEAS", limit)
        return solve(AlignmentProblem(records=[recs], method="sparse", iterations=1, parameters=spec, threads=1))

    whole, chunked = fit(10 ** 9), fit(700)
    assert whole.n_records == chunked.n_records == recs.n_records
    assert np.max(np.abs(chunked.corrections - whole.corrections) / whole.errors) < 1e-6  # summation order only
    np.testing.assert_allclose(chunked.errors, whole.errors, rtol=1e-9)
