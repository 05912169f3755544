"""Solvers on generated problems with known truth; sparse Cholesky against dense LAPACK."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from b2luca.alignment import (AlignmentProblem, ParameterSpec, SupernodalCholesky, read_steering, solve,
                              solve_steering)
from b2luca.alignment.solve import LinearConstraints, solve_system


def _truth_projected(toy):
    A = toy.N.T
    return toy.truth - toy.N @ np.linalg.solve(A @ toy.N, A @ toy.truth)


def test_supernodal_cholesky_matches_dense():
    rng = np.random.default_rng(5)
    # block-structured SPD matrix (blocks of 3 sharing a pattern) plus some scalar couplings
    nb = 120
    B = sp.random(nb, nb, density=0.04, random_state=3)
    P = (B + B.T + sp.identity(nb)).tocsr()
    P.data[:] = 1
    A = sp.kron(P, np.ones((3, 3))).tocsr()
    A.data = rng.normal(size=A.nnz)
    A = (A @ A.T + sp.identity(A.shape[0]) * 0.5).tocsr()
    ch = SupernodalCholesky(A, leaf=8)
    Ad = A.toarray()
    inv = np.linalg.inv(Ad)
    b = rng.normal(size=(A.shape[0], 4))
    assert np.allclose(ch.solve(b), inv @ b, rtol=1e-9, atol=1e-12)
    assert np.allclose(ch.diag_inverse(), np.diag(inv), rtol=1e-9)
    assert ch.nsuper < A.shape[0] / 2  # supervariables/supernodes were found


def test_exact_constrained_covariance_small_system():
    rng = np.random.default_rng(2)
    n = 40
    X = rng.normal(size=(200, n))
    X[:, -1] = X[:, 0] + X[:, 1]  # one exact null mode: (1, 1, 0, ..., -1)
    C = X.T @ X
    b = rng.normal(size=n)
    A = rng.normal(size=(2, n))
    c = np.array([0.3, -0.1])
    K = np.block([[C, A.T], [A, np.zeros((2, 2))]])
    Ki = np.linalg.inv(K)
    x_ref = Ki @ np.concatenate([b, c])
    for method in ("dense", "sparse"):
        out = solve_system(sp.csr_matrix(C), b, LinearConstraints(A, c), method=method)
        assert np.allclose(out.x, x_ref[:n], rtol=1e-8, atol=1e-10), method
        assert np.allclose(out.errors, np.sqrt(np.diag(Ki)[:n]), rtol=1e-8), method
        assert np.abs(A @ out.x - c).max() < 1e-9


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_toy_truth_pulls_constraints(toy, method):
    res = solve_steering(toy.steering, method=method)
    assert res.exact and np.array_equal(res.labels, toy.labels)
    tp = _truth_projected(toy)
    pull = (res.corrections - tp) / res.errors
    assert np.abs(pull).max() < 4.5  # 300 parameters: |pull| > 4.5 has probability ~2e-3
    assert np.mean(np.abs(pull) < 3) > 0.99
    assert abs(pull.std() - 1.0) < 0.1
    assert np.abs(toy.N.T @ res.corrections).max() < 1e-9  # constraints hold
    assert abs(res.chi2_ndf - 1.0) < 5 * np.sqrt(2.0 / res.ndf)


def test_methods_agree(toy):
    rd = solve_steering(toy.steering, method="dense")
    rs = solve_steering(toy.steering, method="sparse")
    rm = solve_steering(toy.steering, method="minres")
    assert np.allclose(rs.corrections, rd.corrections, atol=1e-8 * np.abs(rd.corrections).max())
    assert np.allclose(rs.errors, rd.errors, rtol=1e-8)
    assert not rm.exact and rm.errors is None
    # MINRES with rtol 1e-12: far below the statistical errors and χ² within 1e-6 of the optimum
    assert np.abs((rm.corrections - rd.corrections) / rd.errors).max() < 1e-3
    assert rm.chi2 - rd.chi2 < 1e-6 * rd.chi2
    assert np.abs(toy.N.T @ rm.corrections).max() < 1e-9


def test_fixed_presigma_entries(toy):
    problem = AlignmentProblem.from_steering(read_steering(toy.steering))
    problem.parameters = {11: ParameterSpec(11, 0.0, -1.0), 23: ParameterSpec(23, 0.5, -1.0),
                          31: ParameterSpec(31, 0.0, 1e-4)}
    problem.entries = 10**9  # nothing would survive: use a value that fixes only rare labels
    counts = None
    from b2luca.alignment import Assembler

    asm = Assembler()
    asm.add(toy.records)
    counts = asm.finish().entries
    problem.entries = int(np.sort(counts)[7]) + 1  # fixes the labels with the fewest entries
    res = solve(problem, method="sparse")
    i11, i23, i31 = (np.searchsorted(res.labels, x) for x in (11, 23, 31))
    assert res.fixed[i11] and res.corrections[i11] == 0.0 and res.errors[i11] == 0.0
    assert res.fixed[i23] and res.values[i23] == 0.5
    assert "presigma" in res.fixed_reason[11]
    few = counts < problem.entries
    assert few.sum() >= 8 and np.all(res.fixed[few])
    assert all("entries" in res.fixed_reason[int(l)] for l in res.labels[few] if int(l) not in (11, 23))
    # a tight prior pulls its parameter to the initial value within ~its presigma
    assert abs(res.corrections[i31]) < 5e-4 and res.errors[i31] < 1e-4


def test_singular_local_fit_rejected_and_outliers(tmp_path):
    from b2luca.alignment import concat_records, records_from_dense
    from b2luca.alignment.toy import barrel_geometry, generate_tracks
    from b2luca.alignment.problem import AlignmentProblem

    geo = barrel_geometry(120, n_layers=5)
    rng = np.random.default_rng(11)
    good = generate_tracks(geo, 6000, np.zeros(6 * geo.n_sensors), rng)
    # a record whose two local parameters are degenerate (identical derivatives)
    bad = records_from_dense(np.array([1.0, 2.0, 3.0]), np.full(3, 0.1),
                             np.array([[1.0, 1.0], [2.0, 2.0], [1.0, 1.0]]),
                             np.array([[11], [12], [13]]), np.array([[1.0], [1.0], [1.0]]), np.array([0, 3]))
    # outliers: shift 2% of the u measurements by 40 sigma
    out = generate_tracks(geo, 6000, np.zeros(6 * geo.n_sensors), np.random.default_rng(12))
    hit = np.random.default_rng(13).random(out.n_meas) < 0.02
    out.value = out.value + hit * 40 * out.sigma
    recs = concat_records([good, bad, out])
    N = np.eye(6 * geo.n_sensors)[:, :0]
    _ = N
    problem = AlignmentProblem(records=[recs], method="sparse")
    problem.parameters = {int(l): ParameterSpec(int(l), 0.0, 1.0) for l in geo.labels}  # weak priors
    res = solve(problem)
    assert res.rejected.get("singular") == 1
    assert res.n_used == recs.n_records - 1
    # chiscut removes the tracks with outliers
    problem.chiscut = (1.0, 1.0)
    res_cut = solve(problem)
    n_out_tracks = int(np.unique(out.meas_record()[hit]).size)
    assert res_cut.rejected["chiscut"] >= 0.8 * n_out_tracks
    assert res_cut.chi2_ndf < res.chi2_ndf
    # down-weighting (2 passes): outliers get small weights, χ²/ndf comes back near 1
    problem.chiscut = None
    problem.outlierdownweighting = 3
    res_dw = solve(problem)
    assert res_dw.iterations >= 2
    assert 0.5 * hit.sum() / recs.n_meas < res_dw.downweighted_fraction < 0.5
    assert res_dw.chi2_ndf < 0.5 * res.chi2_ndf


def test_minres_enforces_constraints_on_determined_directions(toy):
    """An extra constraint on a direction the data determine: the first MINRES solution violates it, the
    correction solves must enforce it exactly and land on the exact constrained optimum."""
    problem = AlignmentProblem.from_steering(read_steering(toy.steering))
    from b2luca.alignment.steering import Constraint

    problem.constraints.append(Constraint(0.01, np.array([11, 12]), np.array([1.0, 1.0]), origin="test"))
    exact = solve(problem, method="dense")
    rm = solve(problem, method="minres")
    i11, i12 = np.searchsorted(rm.labels, [11, 12])
    assert abs(rm.corrections[i11] + rm.corrections[i12] - 0.01) < 1e-9
    assert np.abs((rm.corrections - exact.corrections) / exact.errors).max() < 1e-3


def test_minres_correction_solves_when_the_penalty_is_not_enough():
    """A stiff parameter under a constraint: the penalised minimum misses the constraint by about half,
    the m correction solves must restore it exactly (and agree with the exact method)."""
    n = 40
    rng = np.random.default_rng(2)
    Q = rng.normal(size=(n, n)) * 0.1
    C = sp.csr_matrix(np.diag(np.r_[1e6, np.ones(n - 1)]) + Q @ Q.T)
    b = rng.normal(size=n)
    A = np.zeros((1, n))
    A[0, 0] = 1.0
    cons = LinearConstraints(A, np.array([0.5]))
    exact = solve_system(C, b, cons, method="dense")
    it = solve_system(C, b, cons, method="minres")
    assert len(it.info["minres_iterations"]) == 2  # the first solve missed the constraint: one correction
    assert abs(it.x[0] - 0.5) < 1e-10
    assert np.allclose(it.x, exact.x, rtol=1e-8, atol=1e-8)


def test_full_covariance_on_the_constraint_surface(toy):
    """``covariance=True``: the full covariance of the free parameters; its diagonal is the errors, it is
    singular exactly along the constrained directions, and its whitened pulls of (fitted - truth) are N(0, 1)."""
    from dataclasses import replace

    problem = replace(AlignmentProblem.from_steering(toy.steering), covariance=True)
    res = solve(problem, method="sparse")
    assert res.timings["covariance"] > 0
    cov, labels = res.info["covariance"], res.info["covariance_labels"]
    assert np.array_equal(labels, res.labels[~res.fixed])
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), res.errors[~res.fixed], rtol=1e-6)
    assert np.abs(toy.N.T @ cov).max() < 1e-8 * np.abs(cov).max()  # no variance along the constraints
    lam, u = np.linalg.eigh(cov)
    keep = lam > 1e-9 * lam.max()
    assert keep.sum() == cov.shape[0] - toy.N.shape[1]
    white = (u[:, keep].T @ (res.corrections - _truth_projected(toy))) / np.sqrt(lam[keep])
    n = white.size  # width 1 ± 3/sqrt(2n), mean 0 ± 3/sqrt(n)
    assert abs(white.std() - 1.0) < 3 / np.sqrt(2 * n) and abs(white.mean()) < 3 / np.sqrt(n)
    assert "covariance" not in solve(AlignmentProblem.from_steering(toy.steering), method="sparse").info
    # deferred: the same covariance, of this fit (a later fit of other data does not change it)
    late = solve(replace(problem, covariance="deferred"), method="sparse")
    assert "covariance" not in late.info
    solve(replace(problem, covariance="deferred", iterations=2, parameters={int(res.labels[0]): ParameterSpec(
        int(res.labels[0]), 0.0, 1e-4)}), method="sparse")
    assert "covariance" not in late.timings
    dl, dcov = late.info["covariance_deferred"]()
    assert np.array_equal(dl, labels) and np.array_equal(dcov, cov)
    assert late.timings["covariance"] > 0  # (its time, when computed, in that fit's timings)
