"""Issue 17 item 8: the alignment result is the same to the last bit whatever the number of data-pass
threads and BLAS threads (fixed reduction order; fixed BLAS threads in the solve)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from b2luca.alignment import AlignmentProblem, ParameterSpec, solve
from b2luca.alignment.assemble import Assembler
from b2luca.alignment.problem import assemble
from b2luca.alignment.toy import barrel_geometry, generate_tracks


@pytest.fixture(scope="module")
def record_sets():
    geo = barrel_geometry(300, n_layers=5)
    rng = np.random.default_rng(11)
    truth = np.tile([0.1, 0.1, 0.1, 5e-4, 5e-4, 5e-4], geo.n_sensors) * rng.normal(size=6 * geo.n_sensors)
    return [generate_tracks(geo, 800, truth, rng) for _ in range(11)]  # more record sets than threads


def test_data_pass_is_bit_identical_for_any_thread_count(record_sets):
    ref = assemble(AlignmentProblem(records=record_sets, threads=1), Assembler, {})
    for threads in (2, 3, 5):
        gs = assemble(AlignmentProblem(records=record_sets, threads=threads), Assembler, {})
        assert np.array_equal(gs.labels, ref.labels)
        assert (gs.C != ref.C).nnz == 0 and np.array_equal(gs.b, ref.b) and gs.chi2_0 == ref.chi2_0, threads


def test_corrections_are_bit_identical_for_any_thread_counts(record_sets):
    labels = assemble(AlignmentProblem(records=record_sets, threads=1), Assembler, {}).labels
    params = {int(lab): ParameterSpec(int(lab), 0.0, 0.01) for lab in labels}
    results = []
    for threads, blas in ((1, 1), (3, 2), (2, 4)):
        with threadpool_limits(blas, user_api="blas"):  # the caller's BLAS setting must not matter
            result = solve(AlignmentProblem(records=record_sets, threads=threads, method="sparse",
                                            parameters=params))
        results.append(result)
    for other in results[1:]:
        assert np.array_equal(other.corrections, results[0].corrections)
        assert np.array_equal(other.errors, results[0].errors)
    assert np.any(results[0].corrections != 0)
