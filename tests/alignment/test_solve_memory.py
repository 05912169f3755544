"""Memory-saving paths of the exact solve give the same numbers as the plain ones."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from b2luca.alignment.solve import LinearConstraints, _diagonal_slots, solve_system


def _problem(n: int = 60, null: int = 3, seed: int = 4):
    rng = np.random.default_rng(seed)
    N = np.linalg.qr(rng.normal(size=(n, null)))[0]  # the weak modes
    B = rng.normal(size=(n, 2 * n))
    B -= N @ (N.T @ B)
    Cd = B @ B.T
    Cd[np.abs(Cd) < 0.5] = 0.0  # sparse-ish, still symmetric
    Cd -= N @ (N.T @ Cd) + (Cd @ N) @ N.T - N @ (N.T @ Cd @ N) @ N.T  # keep N exactly in the null space
    C = sp.csr_matrix(Cd)
    C.sort_indices()
    return C, rng.normal(size=n), LinearConstraints(N.T.copy(), np.zeros(null))


def test_pivot_diagonal_in_place_leaves_c_unchanged_and_equals_the_copy():
    C, b, cons = _problem()
    before = C.copy()
    fast = solve_system(C, b, cons, method="sparse")
    assert fast.info["regularisation"] == "pivots"
    assert np.array_equal(C.data, before.data) and np.array_equal(C.indices, before.indices)
    plain = C.copy()
    plain.has_canonical_format = False  # the copy path (G = C + diag)
    assert _diagonal_slots(plain, np.array([0])) is None
    slow = solve_system(plain, b, cons, method="sparse")
    assert np.array_equal(fast.x, slow.x) and np.array_equal(fast.errors, slow.errors)
    assert np.abs(cons.A @ fast.x).max() < 1e-10


def test_diagonal_slots_need_every_diagonal_entry():
    C = sp.csr_matrix(np.array([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]))
    C.eliminate_zeros()
    assert _diagonal_slots(C, np.array([0, 2])) is not None
    assert _diagonal_slots(C, np.array([1])) is None
