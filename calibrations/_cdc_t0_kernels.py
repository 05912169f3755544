"""Compiled kernels of the CDC T0 fit (:func:`calibrations.cdc_time_zeros.fit_t0`); not a calibration itself.

One pass over the hits per Newton iteration (numba, ``@njit(cache=True, nogil=True)``) computes each hit's
terms of the edge model and sums the per-board gradient and Hessian and the resolution's score and second
derivative directly, instead of two ``scipy.special.log_ndtr`` calls, a dozen numpy temporaries and five
``np.bincount`` per iteration.  The formulas are those of :func:`calibrations.cdc_time_zeros._terms` (the numpy
reference, kept for the tests); the per-board sums run in hit order as ``np.bincount`` does, so the t0s agree
with the numpy version to round-off (``tests/calibrations/test_cdc_t0_kernels.py``).

:func:`log_ndtr`: log Phi(x), the log of the standard normal CDF, stable in both tails: log(erfc(-x/sqrt2)/2)
below 0, log1p(-erfc(x/sqrt2)/2) above (no cancellation as Phi -> 1), the asymptotic series of the Mills
ratio below -20 (where erfc would underflow); it agrees with ``scipy.special.log_ndtr`` to ~1e-15 relative.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["accumulate", "log_ndtr"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT1_2 = math.sqrt(0.5)


@njit(cache=True, nogil=True)
def log_ndtr(x: float) -> float:  # pragma: no cover - compiled
    """log Phi(x) (module docstring)."""
    if x > 0.0:
        return math.log1p(-0.5 * math.erfc(x * _SQRT1_2))
    if x > -20.0:
        return math.log(0.5 * math.erfc(-x * _SQRT1_2))
    # Phi(x) = phi(x) / (-x) * (1 - 1/x^2 + 3/x^4 - 15/x^6 + ...), summed until the terms stop changing it
    inv2 = 1.0 / (x * x)
    total, term, last, i = 1.0, 1.0, 0.0, 0
    while abs(total - last) > 2.220446049250313e-16:
        i += 1
        last = total
        term *= -(2 * i - 1) * inv2
        total += term
    return -0.5 * x * x - math.log(-x) - _HALF_LOG_2PI + math.log(total)


@njit(cache=True, nogil=True, inline="always")
def _hit(x: float, half: float, sigma: float) -> tuple[float, float, float, float]:  # pragma: no cover - compiled
    """(g, h, ds, dss) of one hit at drift distance x (mm): d log p / dx, d2 log p / dx2, d log p / d sigma,
    d2 log p / d sigma2 of :func:`calibrations.cdc_time_zeros._terms` (F = Phi(a) - Phi(b) computed stably in
    both tails; the formulas agree with ``_terms`` to round-off, not bit for bit)."""
    a = x / sigma
    b = (x - half) / sigma
    log_f = 1.0  # not yet known (a log F is <= 0)
    if a >= 0.0 and b <= 0.0:
        # inside the cell: F = 1 - Q(a) - Q(-b) with Q(t) = Phi(-t) = erfc(t / sqrt2) / 2, one erfc per edge and
        # none for an edge over 8.5 sigma away (Q < 1e-17, below the round-off of the exponents below, which are
        # > 0.9); in the middle of the cell log F = 0.  Used while F >= 1/2 (no cancellation in 1 - Q - Q).
        q = 0.0
        if a < 8.5:
            q += 0.5 * math.erfc(a * _SQRT1_2)
        if b > -8.5:
            q += 0.5 * math.erfc(-b * _SQRT1_2)
        if q <= 0.5:
            log_f = math.log1p(-q)
    if log_f > 0.0:  # outside the cell, or F < 1/2: in log space, each log Phi in the tail it needs
        if a < 0.0:
            la = log_ndtr(a)
            # Phi(b) / Phi(a) < phi(b) / phi(a) = exp(-(b^2 - a^2) / 2) for b < a < 0 (the Mills ratio decreases):
            # below exp(-40) = 4e-18 the correction is under half an ulp of |la| >= log 2 and is left out
            if 0.5 * (b * b - a * a) > 40.0:
                log_f = la
            else:
                log_f = la + math.log1p(-math.exp(min(log_ndtr(b) - la, -1e-300)))
        else:
            lb = log_ndtr(-b)
            if b > 0.0 and 0.5 * (a * a - b * b) > 40.0:  # the mirror image beyond the far edge: -a < -b < 0
                log_f = lb
            else:
                log_f = lb + math.log1p(-math.exp(min(log_ndtr(-a) - lb, -1e-300)))
    # phi(a) / F and phi(b) / F, taken as 0 below exp(-340) = 2e-148 (the middle of a cell, far in a tail): so that
    # no exponential, product or square (g^2, ds^2) of the terms is a subnormal number, whose arithmetic costs
    # ~100 cycles an operation (it doubled the time of a pass over the demo's hits); terms that small change no
    # sum (those of a board's hits are > 1)
    ea = -0.5 * a * a - _HALF_LOG_2PI - log_f
    eb = -0.5 * b * b - _HALF_LOG_2PI - log_f
    fa = math.exp(ea) if ea > -340.0 else 0.0
    fb = math.exp(eb) if eb > -340.0 else 0.0
    g = (fa - fb) / sigma
    h = (-a * fa + b * fb) / sigma ** 2 - g * g
    ds = (-a * fa + b * fb) / sigma
    dss = (a * (1 - a * a) * fa - b * (1 - b * b) * fb) / sigma ** 2 - ds / sigma - ds * ds
    return g, h, ds, dss


@njit(cache=True, nogil=True)
def accumulate(board: np.ndarray, tdc: np.ndarray, half: np.ndarray, t0: np.ndarray, sigma: float, v: float,
               grad: np.ndarray, hess: np.ndarray) -> tuple[float, float]:  # pragma: no cover - compiled
    """One pass over the hits at (t0, sigma): grad[k] = sum g, hess[k] = sum h over board k's hits inside the
    window -8 sigma < x < D + 8 sigma, x = v (tdc - t0[board]) (the arrays are zeroed first); returns the sums
    of ds and dss over all hits inside the window."""
    grad[:] = 0.0
    hess[:] = 0.0
    s1 = 0.0
    s2 = 0.0
    lo = -8.0 * sigma
    for i in range(board.size):
        k = board[i]
        x = v * (tdc[i] - t0[k])
        if not (x > lo and x < half[i] + 8.0 * sigma):
            continue
        g, h, ds, dss = _hit(x, half[i], sigma)
        grad[k] += g
        hess[k] += h
        s1 += ds
        s2 += dss
    return s1, s2
