"""Emulation of how Millepede II (pede) gets parameter errors for ``method inversion`` with constraints.

Used by the reference test to show *why* pede's printed errors differ from the exact constrained covariance
on ``../shared/alignment/small`` (see /work/notes/pede_errors.md). Written from a reading of pede's
algorithm (pede.f90 ``minver``/``xloopn``, mpqldec.f90 ``qldecb``/``qlssq``, mpnum.f90 ``sqminl``); no pede
code is copied.

What pede does (constraints are eliminated by default, ``icelim=1``):

1. The m constraint rows are put in pede's order (by the index of their first non-zero parameter; ties keep
   the order of the text file) and the n-by-m matrix Aᵀ is QL-decomposed by Householder reflections
   H_m, ..., H_1: reflection k acts on parameter rows 1..kn, kn = n - m + k, so that Aᵀ = Q [0; L] with L
   lower triangular in the *last* m parameter rows.
2. The global matrix is transformed to Qᵀ C Q (reflections applied k = m..1); the leading (n-m) block is
   the constrained problem in the basis orthogonal to the constraints and is inverted (Gauss-Jordan with
   diagonal pivoting, ``sqminl``; exact to ~1e-10 here).
3. The covariance of the original parameters is Q [[V, 0], [0, 0]] Qᵀ, computed in place by the same
   reflections (k = 1..m) as symmetric rank-2 updates of the packed lower triangle.
   In pede's routine, row kn of each reflection does not receive the term -2 v_kn (A v)_j for j < kn
   (only its diagonal element and the columns of the reflector's support get their terms), so the
   back-transformed covariance is wrong in the rows of the last m parameters and, through the later
   reflections, slightly wrong everywhere else. The solution vector is unaffected (it is transformed
   with a separate, complete routine), which is why pede's values are exact and its errors are not.

With the complete update the same steps give the exact constrained covariance.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import lapack

__all__ = ["pede_constraint_order", "householder_ql", "pede_inversion_covariances"]


def pede_constraint_order(A: np.ndarray) -> np.ndarray:
    """Order of the constraint rows of ``A`` (m, n) used by pede: by first non-zero column, stable."""
    first = np.array([np.flatnonzero(row)[0] if np.any(row) else A.shape[1] for row in A])
    return np.argsort(first, kind="stable")


def householder_ql(A: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Householder reflectors of the QL decomposition of Aᵀ (A: m constraint rows, n parameters).

    Returns ``[(kn, v), ...]`` for k = 0..m-1 (0-based), v a unit vector supported on rows 0..kn.
    """
    m, n = A.shape
    work = np.array(A.T, dtype=np.float64)
    refl: list[tuple[int, np.ndarray]] = [None] * m  # type: ignore[list-item]
    for k in range(m - 1, -1, -1):
        kn = n - m + k
        v = work[:kn + 1, k].copy()
        nrm = np.sqrt(v @ v)
        v[kn] += nrm if v[kn] >= 0 else -nrm
        v /= np.sqrt(v @ v)
        work[:kn + 1, :k + 1] -= 2.0 * np.outer(v, v @ work[:kn + 1, :k + 1])
        full = np.zeros(n)
        full[:kn + 1] = v
        refl[k] = (kn, full)
    return refl


def _reflect(M: np.ndarray, kn: int, v: np.ndarray, complete: bool) -> None:
    """M <- H M H with H = I - 2 v vᵀ (in place); pede's variant omits -2 v_kn (Mv)_j in row/col kn."""
    Av = M @ v
    vtAv = v @ Av
    M -= 2.0 * np.outer(v, Av) + 2.0 * np.outer(Av, v) - 4.0 * vtAv * np.outer(v, v)
    if not complete:
        corr = 2.0 * v[kn] * Av[:kn]
        M[kn, :kn] += corr
        M[:kn, kn] += corr


def pede_inversion_covariances(C: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covariances for global matrix ``C`` (n, n) and constraint rows ``A`` (m, n), computed pede's way.

    Returns ``(printed, complete)``: the covariance whose √diag pede prints (back-transformation with
    pede's incomplete update) and the same computation with the complete update, which is the exact
    constrained covariance Z (Zᵀ C Z)⁻¹ Zᵀ.
    """
    m, n = A.shape
    refl = householder_ql(np.asarray(A, np.float64)[pede_constraint_order(A)])
    M = np.array(C, dtype=np.float64)
    for k in range(m - 1, -1, -1):  # Qᵀ C Q; its leading block is exact with either update
        _reflect(M, *refl[k], complete=True)
    nf = n - m
    chol, info = lapack.dpotrf(M[:nf, :nf], lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"reduced matrix not positive definite (dpotrf info {info})")
    inv, info = lapack.dpotri(chol, lower=1)
    inv = np.tril(inv) + np.tril(inv, -1).T
    out = []
    for complete in (False, True):  # back to the parameters: Q [[V, 0], [0, 0]] Qᵀ
        W = np.zeros((n, n))
        W[:nf, :nf] = inv
        for k in range(m):
            _reflect(W, *refl[k], complete=complete)
        out.append(W)
    return out[0], out[1]
