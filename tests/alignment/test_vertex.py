"""Common-vertex records (b2luca.alignment.vertex): one record per event, the beam spot counted once."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import AlignmentProblem, records_from_dense
from b2luca.alignment.assemble import Assembler
from b2luca.alignment.problem import assemble
from b2luca.alignment.vertex import event_vertex_records

LABELS = (2_000_001, 2_000_002)
POS, SIZE = (0.4, -0.05), (0.010, 0.0002)


def _tracks(rng, n, rows=6):
    """n track records: ``rows`` hits each with 3 local parameters (d0, phi0, one more) and one global label."""
    value = rng.normal(0, 0.01, n * rows)
    sigma = np.full(n * rows, 0.01)
    local = rng.normal(0, 1, (n * rows, 3))
    lab = np.tile(np.array([[11]]), (n * rows, 1))
    der = rng.normal(0, 1, (n * rows, 1))
    recs = records_from_dense(value, sigma, local, lab, der, np.arange(n + 1) * rows)
    return recs, rng.normal(0.0, 0.02, n), rng.uniform(-np.pi, np.pi, n), np.full(n, 3)


def _system(recs):
    gs = assemble(AlignmentProblem(records=[recs]), lambda: Assembler(), {})
    return gs.labels, gs.C.toarray(), gs.b


def _single_track_beam_rows(recs, d0, phi):
    """The per-track beam-spot row (the formulation a one-track event must reproduce)."""
    rows = []
    s, c = np.sin(phi), np.cos(phi)
    for i in range(recs.n_records):
        a, b = recs.rec_ptr[i], recs.rec_ptr[i + 1]
        loc = np.zeros((b - a + 1, 3))
        m = (recs.loc_meas >= a) & (recs.loc_meas < b)
        loc[recs.loc_meas[m] - a, recs.loc_index[m]] = recs.loc_der[m]
        loc[-1, :2] = [1.0, -(POS[0] * c[i] + POS[1] * s[i])]
        g = (recs.glb_meas >= a) & (recs.glb_meas < b)
        lab = np.zeros((b - a + 1, 2), np.int64)
        der = np.zeros((b - a + 1, 2))
        lab[recs.glb_meas[g] - a, 0] = recs.glb_label[g]
        der[recs.glb_meas[g] - a, 0] = recs.glb_der[g]
        lab[-1] = LABELS
        der[-1] = [-s[i], c[i]]
        value = np.r_[recs.value[a:b], -(d0[i] - (POS[0] * s[i] - POS[1] * c[i]))]
        sigma = np.r_[recs.sigma[a:b], np.hypot(SIZE[0] * s[i], SIZE[1] * c[i])]
        rows.append((value, sigma, loc, lab, der))
    ptr = np.cumsum([0] + [r[0].size for r in rows])
    return records_from_dense(*(np.concatenate([r[k] for r in rows]) for k in range(5)), ptr)


def test_one_track_events_equal_the_per_track_beam_row():
    rng = np.random.default_rng(1)
    recs, d0, phi, nl = _tracks(rng, 40)
    event = np.arange(40)[::-1]  # any order
    merged = event_vertex_records(recs, event, d0, phi, nl, POS, SIZE, LABELS)
    assert merged.n_records == 40
    la, ca, ba = _system(merged)
    lb, cb, bb = _system(_single_track_beam_rows(recs, d0, phi))
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_allclose(ca, cb, rtol=1e-5, atol=1e-6 * np.abs(cb).max())
    np.testing.assert_allclose(ba, bb, rtol=1e-5, atol=1e-6 * np.abs(bb).max())


def test_tracks_of_one_event_share_one_vertex_and_one_beam_measurement():
    rng = np.random.default_rng(2)
    recs, d0, phi, nl = _tracks(rng, 12)
    event = np.repeat([7, 3, 9], 4)
    merged = event_vertex_records(recs, event, d0, phi, nl, POS, SIZE, LABELS)
    assert merged.n_records == 3
    for r in range(3):
        a, b = merged.rec_ptr[r], merged.rec_ptr[r + 1]
        m = (merged.loc_meas >= a) & (merged.loc_meas < b)
        assert merged.loc_index[m].max() + 1 == 4 * 3 + 2  # four tracks' locals + the vertex (x, y)
        g = (merged.glb_meas >= a) & (merged.glb_meas < b)
        assert np.sum(merged.glb_label[g] == LABELS[0]) == 1 and np.sum(merged.glb_label[g] == LABELS[1]) == 1
    assert merged.n_meas == recs.n_meas + 12 + 2 * 3
    # the beam spot is measured once per event: its information (the beam block of the global matrix) is
    # that of 3 vertices, not of 12 independent tracks
    labels, c, _ = _system(merged)
    i = np.searchsorted(labels, LABELS[0])
    assert c[i, i] <= 3 / SIZE[0] ** 2 * (1 + 1e-9)
    per_track = _system(_single_track_beam_rows(recs, d0, phi))[1]
    assert per_track[i, i] > 1.5 * c[i, i]


def test_shape_mismatch_is_an_error():
    rng = np.random.default_rng(3)
    recs, d0, phi, nl = _tracks(rng, 3)
    with pytest.raises(ValueError, match="3 records"):
        event_vertex_records(recs, np.arange(2), d0, phi, nl, POS, SIZE, LABELS)
