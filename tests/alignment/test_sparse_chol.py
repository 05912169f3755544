"""Supernodal Cholesky + selected inversion against dense LAPACK/numpy.

Tolerances: the backward-stable Cholesky gives a relative error of about n·ε·κ(A) on A⁻¹b and diag(A⁻¹);
each test computes κ(A) and checks against 10·n·ε·κ (never looser than the brief's 1e-10 is needed here:
the matrices are built with κ ≲ 1e4, asserted).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from b2luca.alignment import Assembler
from b2luca.alignment.sparse_chol import NotPositiveDefinite, SupernodalCholesky, nested_dissection
from b2luca.alignment.toy import barrel_geometry, generate_tracks

EPS = np.finfo(np.float64).eps


def _block_spd(pattern: sp.spmatrix, sizes: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """SPD matrix whose block (i, j) of sizes[i] x sizes[j] is dense where ``pattern`` is non-zero."""
    P = sp.csr_matrix(pattern + pattern.T + sp.identity(pattern.shape[0]))
    P.data[:] = 1
    start = np.concatenate([[0], np.cumsum(sizes)])
    bi, bj = P.nonzero()
    rows, cols = [], []
    for i, j in zip(bi, bj):  # test helper: a loop over a few hundred blocks is fine here
        r, c = np.meshgrid(np.arange(start[i], start[i + 1]), np.arange(start[j], start[j + 1]), indexing="ij")
        rows.append(r.ravel())
        cols.append(c.ravel())
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    n = int(start[-1])
    M = sp.csr_matrix((rng.normal(size=rows.size), (rows, cols)), shape=(n, n))
    M = (M + M.T) * 0.5
    # diagonally dominant: κ stays small, the pattern stays the block pattern
    rowsum = np.asarray(abs(M).sum(axis=1)).ravel()
    return (M + sp.diags(rowsum + 1.0)).tocsr()


def _check_against_dense(A: sp.csr_matrix, ch: SupernodalCholesky, rng: np.random.Generator) -> None:
    Ad = A.toarray()
    n = Ad.shape[0]
    kappa = np.linalg.cond(Ad)
    assert kappa < 1e5
    tol = 10 * n * EPS * kappa
    assert tol < 1e-8
    inv = np.linalg.inv(Ad)
    B = rng.normal(size=(n, 5))
    X = ch.solve(B)
    assert np.max(np.abs(X - inv @ B)) <= tol * np.max(np.abs(inv @ B))
    x1 = ch.solve(B[:, 0])
    assert x1.shape == (n,)
    assert np.allclose(x1, X[:, 0], rtol=0, atol=tol * np.max(np.abs(X[:, 0])))
    d = ch.diag_inverse()
    assert np.max(np.abs(d - np.diag(inv)) / np.diag(inv)) <= tol
    # the factor reproduces A: L Lᵀ applied to a vector, through the stored blocks
    v = rng.normal(size=n)
    assert np.allclose(ch.solve(A @ v), v, rtol=0, atol=tol * np.max(np.abs(v)) * 10)


def test_random_block_sparse_matches_dense():
    rng = np.random.default_rng(11)
    nb = 70  # 420 parameters in blocks of 6
    pat = sp.random(nb, nb, density=0.05, random_state=4)
    A = _block_spd(pat, np.full(nb, 6), rng)
    ch = SupernodalCholesky(A, leaf=4)
    _check_against_dense(A, ch, rng)
    assert ch.nsuper > 1
    # supernodes cover the columns exactly once, in order; rows lie beyond the supernode, sorted
    assert ch.c0[0] == 0 and ch.c1[-1] == A.shape[0] and np.all(ch.c0[1:] == ch.c1[:-1])
    for s in range(ch.nsuper):
        R = ch.rows[s]
        assert np.all(np.diff(R) > 0) and (R.size == 0 or R[0] >= ch.c1[s])
        p = ch.sn_parent[s]
        assert p == -1 or p > s  # postorder
        # the rows of a supernode are columns of its ancestors (valid separators)
        anc = []
        while p >= 0:
            anc.append(np.arange(ch.c0[p], ch.c1[p]))
            p = ch.sn_parent[p]
        assert np.all(np.isin(R, np.concatenate(anc) if anc else np.zeros(0, int)))


def test_mixed_block_sizes_and_components():
    rng = np.random.default_rng(3)
    nb = 90
    sizes = rng.integers(1, 7, size=nb)  # partly fixed sensors: 1..6 free parameters
    # two disconnected groups (a forest of supernode trees) plus a few isolated blocks
    pat = sp.lil_matrix((nb, nb))
    for lo, hi in ((0, 40), (40, 85)):
        sub = sp.random(hi - lo, hi - lo, density=0.08, random_state=int(lo) + 1)
        pat[lo:hi, lo:hi] = sub
    A = _block_spd(sp.csr_matrix(pat), sizes, rng)
    ch = SupernodalCholesky(A, leaf=3)
    assert np.sum(ch.sn_parent < 0) >= 2
    _check_against_dense(A, ch, rng)


def test_grid_graph_spectral_dissection_is_fill_reducing():
    """A 2-D grid of 2-parameter blocks, large enough for the sparse (ARPACK) Fiedler vectors."""
    rng = np.random.default_rng(8)
    m = 24  # 576 blocks, 1152 parameters
    g = sp.diags([1.0, 1.0], [1, m], shape=(m * m, m * m)).tolil()
    for i in range(m - 1, m * m - 1, m):
        g[i, i + 1] = 0  # no wrap-around between grid rows
    A = _block_spd(sp.csr_matrix(g), np.full(m * m, 2), rng)
    ch = SupernodalCholesky(A, leaf=4)  # small dense leaves: the bound below is about the separators
    n = A.shape[0]
    # nested dissection on a grid: nnz(L) = O(n log n); the banded (natural) order gives ~ n·2m
    # (bandwidth 2m variables): already ~1.8x more at this small size
    assert ch.nnz_L < 0.65 * n * 2 * m
    assert ch.nnz_L < 0.1 * n * (n + 1) / 2
    _check_against_dense(A, ch, rng)


def test_nested_dissection_is_a_permutation():
    rng = np.random.default_rng(1)
    Q = sp.random(300, 300, density=0.02, random_state=2)
    Q = ((Q + Q.T) != 0).astype(float).tocsr()
    Q.setdiag(0)
    Q.eliminate_zeros()
    order = nested_dissection(Q, rng.random(300) + 1.0)
    assert np.array_equal(np.sort(order), np.arange(300))


def test_toy_alignment_matrix():
    geo = barrel_geometry(300, n_layers=5)
    rng = np.random.default_rng(5)
    truth = np.zeros(geo.n_sensors * 6)
    recs = generate_tracks(geo, 5000, truth, rng)
    asm = Assembler()
    asm.add(recs)
    C = asm.finish().C
    # C is singular (the weak modes); a ridge of 1e-3 of the mean diagonal makes it SPD (κ ~ 1e4 after
    # the diagonal scaling the test applies, which does not change the sparsity)
    d = 1.0 / np.sqrt(C.diagonal())
    Cs = sp.diags(d) @ C @ sp.diags(d)
    A = (Cs + 1e-3 * sp.identity(C.shape[0])).tocsr()
    ch = SupernodalCholesky(A)
    assert ch.nsuper < A.shape[0] / 6
    _check_against_dense(A, ch, rng)


def test_not_positive_definite():
    A = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(NotPositiveDefinite):
        SupernodalCholesky(A)


def test_empty_and_diagonal():
    ch = SupernodalCholesky(sp.csr_matrix((0, 0)))
    assert ch.solve(np.zeros(0)).shape == (0,)
    assert ch.diag_inverse().shape == (0,)
    D = sp.diags(np.arange(1.0, 8.0)).tocsr()
    ch = SupernodalCholesky(D)
    assert np.allclose(ch.diag_inverse(), 1.0 / np.arange(1.0, 8.0), rtol=1e-15)
    assert np.allclose(ch.solve(np.ones(7)), 1.0 / np.arange(1.0, 8.0), rtol=1e-15)


def test_analysis_reused_for_the_same_pattern_only():
    rng = np.random.default_rng(21)
    nb = 50
    pat = sp.random(nb, nb, density=0.06, random_state=9)
    A1 = _block_spd(pat, np.full(nb, 6), rng)
    A2 = A1.copy()
    A2.data = A2.data * (1.0 + 0.2 * rng.random(A2.nnz))
    A2 = ((A2 + A2.T) * 0.5 + sp.diags(np.asarray(abs(A2).sum(axis=1)).ravel())).tocsr()  # same pattern, SPD
    ch1 = SupernodalCholesky(A1, leaf=4)
    ch2 = SupernodalCholesky(A2, leaf=4)
    assert ch2.perm is ch1.perm  # the symbolic factorisation was reused ...
    _check_against_dense(A2, ch2, rng)  # ... and the numbers are those of A2
    _check_against_dense(A1, ch1, rng)
    A3 = _block_spd(sp.random(nb, nb, density=0.06, random_state=10), np.full(nb, 6), rng)
    ch3 = SupernodalCholesky(A3, leaf=4)
    assert ch3.perm is not ch1.perm
    _check_against_dense(A3, ch3, rng)
    ch4 = SupernodalCholesky(A1, leaf=4, reuse_analysis=False)
    assert np.array_equal(ch4.perm, ch1.perm)  # the analysis is deterministic


def test_many_isolated_parameters_are_packed():
    """Thousands of uncoupled parameters (e.g. only a presigma) next to coupled blocks: few supernodes."""
    rng = np.random.default_rng(4)
    nb = 30
    A_blk = _block_spd(sp.random(nb, nb, density=0.1, random_state=5), np.full(nb, 6), rng)
    iso = sp.diags(rng.random(3000) + 1.0)
    A = sp.block_diag([iso, A_blk, iso], format="csr")
    ch = SupernodalCholesky(A)
    assert ch.nsuper < 6000 / 16
    b = rng.normal(size=A.shape[0])
    x = ch.solve(b)
    assert np.allclose(A @ x, b, rtol=0, atol=1e-12 * np.abs(b).max() * 100)
    d = ch.diag_inverse()
    assert np.allclose(d[:3000], 1.0 / iso.diagonal(), rtol=1e-14)
    inv_blk = np.linalg.inv(A_blk.toarray())
    assert np.allclose(d[3000:3000 + 6 * nb], np.diag(inv_blk), rtol=1e-10)


def test_selected_inversion_kernels() -> None:
    """The gather of an ancestor's panel block (contiguous and scattered columns) and the lower-trapezoid
    product against plain numpy."""
    from b2luca.alignment.sparse_chol import _TRAPEZOID_MIN, _add_lower_product, _gather_block

    rng = np.random.default_rng(5)
    zt = np.asfortranarray(rng.normal(size=(40, 9)))
    rowpos = np.array([2, 3, 4, 10, 11, 30, 39])
    for colpos in (np.array([2, 3, 4]), np.array([1, 4, 8])):
        assert np.array_equal(_gather_block(zt, rowpos, colpos), zt[np.ix_(rowpos, colpos)])
    for k in (5, _TRAPEZOID_MIN + 37):
        Lh, W = rng.normal(size=(60, k)), rng.normal(size=(60, k))
        Z = np.asfortranarray(rng.normal(size=(k, k)))
        want = np.tril(Z + Lh.T @ W)
        _add_lower_product(Z, Lh, W)
        assert np.allclose(np.tril(Z), want, rtol=0, atol=1e-12)


def test_large_supernodes_take_the_trapezoid_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """Selected inversion through the lower-trapezoid product (every supernode above the threshold)."""
    from b2luca.alignment import sparse_chol

    calls = []
    real = sparse_chol._add_lower_product
    monkeypatch.setattr(sparse_chol, "_TRAPEZOID_MIN", 8)
    monkeypatch.setattr(sparse_chol, "_add_lower_product", lambda Z, Lh, W: (calls.append(Z.shape[0]),
                                                                             real(Z, Lh, W)))
    rng = np.random.default_rng(17)
    nb = 60
    A = _block_spd(sp.random(nb, nb, density=0.06, random_state=8), np.full(nb, 6), rng)
    ch = SupernodalCholesky(A, leaf=4, reuse_analysis=False)
    _check_against_dense(A, ch, rng)
    assert calls and max(calls) >= 8


def test_threads_give_the_same_bits_and_errors_surface() -> None:
    """Supernodes factorised / inverted on several worker threads (GIL-free BLAS): the factor, the solution
    and diag(A⁻¹) are bit-identical to one thread, and a failure in a worker reaches the caller."""
    rng = np.random.default_rng(23)
    nb = 120
    A = _block_spd(sp.random(nb, nb, density=0.04, random_state=9), np.full(nb, 6), rng)
    one = SupernodalCholesky(A, leaf=4, reuse_analysis=False, threads=1)
    b = rng.normal(size=(A.shape[0], 3))
    for threads in (2, 3):
        many = SupernodalCholesky(A, leaf=4, reuse_analysis=False, threads=threads)
        assert many._threads() == threads
        assert all(np.array_equal(x, y) for x, y in zip(one.L11, many.L11))
        assert all(np.array_equal(x, y) for x, y in zip(one.L21, many.L21))
        assert np.array_equal(one.solve(b), many.solve(b))
        assert np.array_equal(one.diag_inverse(), many.diag_inverse())
    _check_against_dense(A, SupernodalCholesky(A, leaf=4, threads=2), rng)
    # indefinite (a positive diagonal, a 2x2 minor < 0): the worker's NotPositiveDefinite is raised here
    Abad = A.tolil()
    Abad[5, 6] = Abad[6, 5] = 10.0 * np.sqrt(A[5, 5] * A[6, 6])
    with pytest.raises(NotPositiveDefinite):
        SupernodalCholesky(Abad.tocsr(), leaf=4, reuse_analysis=False, threads=2)


def test_diag_inverse_can_release_the_factor() -> None:
    rng = np.random.default_rng(29)
    nb = 50
    A = _block_spd(sp.random(nb, nb, density=0.06, random_state=3), np.full(nb, 6), rng)
    ch = SupernodalCholesky(A, leaf=4, threads=2)
    keep = ch.diag_inverse()
    assert np.array_equal(ch.diag_inverse(release=True), keep)
    assert all(x is None for x in ch.L11) and all(x is None for x in ch.L21)  # the factor is gone
    with pytest.raises(RuntimeError, match="released"):
        ch.solve(np.ones(A.shape[0]))
