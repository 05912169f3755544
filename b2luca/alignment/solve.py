"""Solving the global system with exact linear equality constraints.

Exact methods (``dense``, ``sparse``, ``auto``) solve the Lagrange-bordered system

    [ C  Aᵀ ] [Δg]   [b]
    [ A  0  ] [ λ] = [c]

without ever factorising an indefinite or singular matrix: C is usually singular (the weak modes the
constraints remove), so we add γ_p on the diagonal of m *pivot* parameters P (chosen by QR with column
pivoting of A, so that they pin the modes the constraints pin), G = C + Σ γ_p e_p e_pᵀ, which is symmetric
positive definite and exactly as sparse as C. The removed diagonal is put back exactly with m auxiliary
unknowns μ = γ Pᵀ Δg; with B = [−P, Aᵀ] (n × 2m) and D' = diag(1/γ, 0)::

    [ G   B  ] [Δg]   [b]
    [ Bᵀ  D' ] [ y] = [r],  r = (0, c)

Eliminating Δg: (BᵀG⁻¹B − D') y = BᵀG⁻¹b − r (a 2m × 2m system), Δg = G⁻¹(b − B y); the covariance is
the Δg block of the inverse, G⁻¹ − G⁻¹B (BᵀG⁻¹B − D')⁻¹ BᵀG⁻¹, whose diagonal needs diag(G⁻¹) and 2m solves.
So every exact method needs one Cholesky factorisation of G, 2m+1 solves and diag(G⁻¹):

* ``dense``: LAPACK potrf/potri (scipy.linalg). Limited to n < 16000 (multithreaded OpenBLAS crashed in a
  dense Cholesky at n ≥ 16000 on this kind of machine);
* ``sparse``: supernodal multifrontal Cholesky + selected inversion (:mod:`.sparse_chol`);
* ``auto``: dense up to 2000 free parameters, else sparse (dense LAPACK suffers most from OpenBLAS
  thread contention on a shared machine).

``minres`` (not exact): MINRES (scipy) on H = C + ρAᵀA (positive definite on the whole space, equal to C
on the constraint surface), Jacobi preconditioned, rtol 1e-12. If that solution violates the constraints
(by more than 1e-9 of its norm), m more solves enforce them exactly through the m × m system
A H⁻¹ Aᵀ λ = A H⁻¹(b + ρAᵀc) − c; constraints that only remove weak modes need no correction. No errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .sparse_chol import NotPositiveDefinite, SupernodalCholesky
from .errors import SolverError

__all__ = ["LinearConstraints", "solve_system", "SolveOutput", "SolverError", "DENSE_MAX", "AUTO_DENSE_MAX",
           "MINRES_RTOL"]

DENSE_MAX = 15999
AUTO_DENSE_MAX = 2000
MINRES_RTOL = 1e-12


@dataclass
class LinearConstraints:
    """A Δg = c over the free parameters (dense rows, m is small)."""

    A: np.ndarray  # (m, n)
    c: np.ndarray  # (m,)

    @property
    def m(self) -> int:
        return int(self.A.shape[0])


@dataclass
class SolveOutput:
    x: np.ndarray
    errors: np.ndarray | None
    method: str
    exact: bool
    timings: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def _independent_rows(A: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Drop linearly dependent constraint rows (reported), keep the rest."""
    if A.shape[0] == 0:
        return A, c, []
    scale = np.linalg.norm(A, axis=1)
    if np.any(scale == 0):
        zero = np.flatnonzero(scale == 0)
        if np.any(c[zero] != 0):
            raise SolverError(f"constraint(s) {list(zero)} have no free parameter but a non-zero value")
    keep = scale > 0
    As, cs = A[keep] / scale[keep, None], c[keep] / scale[keep]
    _, R, piv = la.qr(As.T, mode="economic", pivoting=True)
    d = np.abs(np.diag(R))
    r = int(np.sum(d > 1e-10 * d.max())) if d.size else 0
    rows = np.sort(piv[:r])
    dropped = sorted(set(np.flatnonzero(keep)[np.setdiff1d(np.arange(As.shape[0]), rows)]) |
                     set(np.flatnonzero(~keep)))
    return As[rows], cs[rows], [int(i) for i in dropped]


def _pivots(A: np.ndarray) -> np.ndarray:
    """m parameters that the constraints determine best (QR with column pivoting of A)."""
    _, _, piv = la.qr(A, mode="economic", pivoting=True)
    return np.sort(piv[: A.shape[0]])


def _diagonal_slots(C: sp.spmatrix, P: np.ndarray) -> np.ndarray | None:
    """Positions in ``C.data`` of the diagonal entries (p, p), p in P; None unless C is canonical CSR holding
    all of them."""
    if C.format != "csr" or not C.has_canonical_format:
        return None
    out = np.empty(P.size, np.int64)
    for k, p in enumerate(P):  # m (the number of constraints) is small
        lo, hi = int(C.indptr[p]), int(C.indptr[p + 1])
        j = lo + int(np.searchsorted(C.indices[lo:hi], p))
        if j >= hi or C.indices[j] != p:
            return None
        out[k] = j
    return out


class _DenseFactor:
    def __init__(self, G: sp.spmatrix):
        n = G.shape[0]
        if n > DENSE_MAX:
            raise SolverError(f"dense method limited to {DENSE_MAX} parameters (got {n}); use 'sparse'")
        self.cf = la.cho_factor(G.toarray(), lower=True, check_finite=False)

    def solve(self, b: np.ndarray) -> np.ndarray:
        return la.cho_solve(self.cf, b, check_finite=False)

    def diag_inverse(self) -> np.ndarray:
        inv, info = la.lapack.dpotri(self.cf[0], lower=1)
        if info:
            raise SolverError(f"dpotri failed (info {info})")
        return np.diag(inv).copy()


def solve_system(C: sp.csr_matrix, b: np.ndarray, cons: LinearConstraints | None, method: str = "auto",
                 errors: bool = True, phase_end: Callable[[str], None] | None = None) -> SolveOutput:
    """Solve C Δg = b subject to A Δg = c (exactly, or by MINRES); see the module docstring.

    ``phase_end(name)`` is called as each phase (factorise, solve, errors) ends (e.g. to measure memory).
    """
    mark = phase_end or (lambda name: None)
    n = C.shape[0]
    t: dict[str, float] = {}
    if method == "auto":
        method = "dense" if n <= AUTO_DENSE_MAX else "sparse"
    if method not in ("dense", "sparse", "minres"):
        raise SolverError(f"unknown method {method!r}")
    A = cons.A if cons is not None else np.zeros((0, n))
    c = cons.c if cons is not None else np.zeros(0)
    A, c, dropped = _independent_rows(A, c)
    m = A.shape[0]
    info: dict = {"constraints_used": m, "constraints_dropped": dropped, "n": n}
    if n == 0:
        return SolveOutput(np.zeros(0), np.zeros(0), method, method != "minres", t, info)
    if method == "minres":
        return _solve_minres(C, b, A, c, info)
    t0 = time.perf_counter()
    diagC = C.diagonal()
    scale = float(np.mean(np.abs(diagC[diagC != 0]))) if np.any(diagC != 0) else 1.0
    factor = _DenseFactor if method == "dense" else SupernodalCholesky
    fac = None
    if m:
        # preferred: m pivot parameters (keeps the sparsity of C)
        P = _pivots(A)
        gam = np.maximum(np.abs(diagC[P]), 1e-3 * scale)
        slots = _diagonal_slots(C, P)
        if slots is not None:  # G = C + γ on the pivots, in C's own arrays (restored below): no copy of C
            orig = C.data[slots].copy()
            C.data[slots] += gam  # the same sums as C + diag(γ)
            G = C
        else:
            G = (C + sp.csr_matrix((gam, (P, P)), shape=(n, n))).tocsr()
        try:
            fac = factor(G)
            info["regularisation"] = "pivots"
        except (NotPositiveDefinite, la.LinAlgError):
            fac = None
        finally:
            if slots is not None:
                C.data[slots] = orig
        del G
    else:
        try:
            fac = factor(C)
        except (NotPositiveDefinite, la.LinAlgError) as exc:
            raise SolverError("the system is singular and there are no constraints: fix parameters, add "
                              f"presigmas or constraints ({exc})") from exc
    if fac is not None:
        t["factorise"] = time.perf_counter() - t0
        mark("factorise")
        t0 = time.perf_counter()
        B = np.zeros((n, 2 * m))
        if m:
            B[P, np.arange(m)] = -1.0
            B[:, m:] = A.T
        W = fac.solve(np.column_stack([b, B]))
        u, WB = W[:, 0], W[:, 1:]
        if m:
            Dp = np.zeros((2 * m, 2 * m))
            Dp[np.arange(m), np.arange(m)] = 1.0 / gam
            T = B.T @ WB - Dp
            r = np.concatenate([np.zeros(m), c])
            y = np.linalg.solve(T, B.T @ u - r)
            x = u - WB @ y
        else:
            x = u
    else:
        # the pivots do not pin the singular modes: augmented Lagrangian H = C + ρAᵀA (exact too, but
        # AᵀA fills the rows/columns of all constrained parameters)
        supp = np.flatnonzero(np.any(A != 0, axis=0))
        if method == "sparse" and supp.size > 4000:
            raise SolverError("the system is singular: the constraints do not remove all weak modes, or they "
                              "do so only through parameters the pivot choice missed")
        rho = scale / max(float(np.mean((A * A).sum(axis=0)[supp])), 1e-300)
        As = sp.csr_matrix(A)
        H = (C + rho * (As.T @ As)).tocsr()
        try:
            fac = factor(H)
        except (NotPositiveDefinite, la.LinAlgError) as exc:
            raise SolverError("the system is singular: the constraints (and fixed parameters) do not remove "
                              f"all weak modes ({exc})") from exc
        info["regularisation"] = "augmented Lagrangian"
        t["factorise"] = time.perf_counter() - t0
        mark("factorise")
        t0 = time.perf_counter()
        W = fac.solve(np.column_stack([b + rho * (A.T @ c), A.T]))
        u, WB = W[:, 0], W[:, 1:]
        T = A @ WB
        lam = np.linalg.solve(T, A @ u - c)
        x = u - WB @ lam
    t["solve"] = time.perf_counter() - t0
    mark("solve")
    err = None
    if errors:
        t0 = time.perf_counter()
        # the factor is not needed afterwards: the selected inversion lets go of it as it goes (memory)
        dG = fac.diag_inverse(release=True) if isinstance(fac, SupernodalCholesky) else fac.diag_inverse()
        if m:
            Tinv = np.linalg.inv(T)
            dG = dG - np.einsum("ia,ab,ib->i", WB, Tinv, WB)
        err = np.sqrt(np.maximum(dG, 0.0))
        t["errors"] = time.perf_counter() - t0
        mark("errors")
    if m:
        info["constraint_residual"] = float(np.max(np.abs(A @ x - c))) if m else 0.0
    if isinstance(fac, SupernodalCholesky):
        info.update(supernodes=fac.nsuper, nnz_L=fac.nnz_L)
    return SolveOutput(x, err, method, True, t, info)


def _solve_minres(C: sp.csr_matrix, b: np.ndarray, A: np.ndarray, c: np.ndarray, info: dict) -> SolveOutput:
    n = C.shape[0]
    t0 = time.perf_counter()
    m = A.shape[0]
    dC = C.diagonal()
    dA = (A * A).sum(axis=0)
    rho = float(np.mean(dC[dC > 0]) / np.mean(dA[dA > 0])) if m and np.any(dA > 0) else 0.0
    Cc = C.tocsr()

    def mv(v):
        out = Cc @ v
        if m:
            out = out + rho * (A.T @ (A @ v))
        return out

    H = spla.LinearOperator((n, n), matvec=mv, dtype=np.float64)
    dH = dC + rho * dA
    dH = np.where(dH > 0, dH, 1.0)
    M = spla.LinearOperator((n, n), matvec=lambda v: v / dH, dtype=np.float64)
    iters, flags = [], []

    def run(r: np.ndarray) -> np.ndarray:
        count = [0]

        def cb(_x: np.ndarray) -> None:
            count[0] += 1

        x, flag = spla.minres(H, r, M=M, rtol=MINRES_RTOL, maxiter=20 * n, callback=cb)
        iters.append(count[0])
        flags.append(int(flag))
        return x

    u = run(b + rho * (A.T @ c))
    x = u
    if m:
        # When the constraints only remove directions the data do not see (the usual weak modes), the
        # minimum of χ² + ρ|A Δg − c|² already satisfies them; otherwise correct with H⁻¹Aᵀ (m more solves).
        tol = 1e-9 * max(float(np.linalg.norm(u)), float(np.abs(c).max(initial=0.0)), 1e-300)
        if np.max(np.abs(A @ u - c)) > tol:
            HA = np.column_stack([run(A[i]) for i in range(m)])
            lam = np.linalg.solve(A @ HA, A @ u - c)
            x = u - HA @ lam
        info["constraint_residual"] = float(np.max(np.abs(A @ x - c)))
    info.update(minres_iterations=iters, minres_flags=flags, rtol=MINRES_RTOL)
    return SolveOutput(x, None, "minres", False, {"solve": time.perf_counter() - t0}, info)
