"""The millepede.res number format (pede's G14.5) written with plain floats equals the numpy-scalar one."""

from __future__ import annotations

import numpy as np

from b2luca.alignment.result import _g


def _g_numpy(x: np.float64) -> str:
    """The format as written before with numpy scalars (np.isfinite, np.log10, numpy's round): the reference."""
    if not np.isfinite(x):
        return f"{x!s:>14}"
    ax = abs(x)
    if ax == 0.0:
        return "   0.0000     "
    e = int(np.floor(np.log10(ax))) + 1
    if 0 <= e <= 5 and round(ax, 5 - e) < 1e5:
        return f"{x:.{max(5 - e, 0)}f}".rjust(10) + "    "
    mant = x / 10.0 ** e
    if round(abs(mant), 5) >= 1.0:
        mant /= 10.0
        e += 1
    return f"{mant:.5f}E{e:+03d}".rjust(14)


def _values() -> np.ndarray:
    rng = np.random.default_rng(7)
    spread = rng.standard_normal(20000) * 10.0 ** rng.integers(-12, 12, 20000)
    # decimal-looking values: ties of the 5-digit rounding (99999.5, 0.999995e-3, ...)
    ties = np.round(rng.standard_normal(20000) * 10.0 ** rng.integers(-6, 6, 20000), 5)
    edges = [0.0, np.inf, -np.inf, np.nan, 99999.5, 99999.49999, 0.999995, 5e-324, 1e300]
    for k in range(-10, 11):
        p = 10.0 ** k
        edges += [p, np.nextafter(p, 0), np.nextafter(p, 2 * p), 0.999995 * p, 0.9999951 * p, 0.5 * p, 1.5 * p]
    edges_a = np.array(edges)
    return np.concatenate([spread, ties, edges_a, -edges_a])


def test_format_equals_the_numpy_scalar_one():
    vals = _values()
    got = [_g(v) for v in vals.tolist()]
    want = [_g_numpy(v) for v in vals]
    diff = [(v, w, g) for v, w, g in zip(vals, want, got) if w != g]
    assert not diff, diff[:5]


def test_format_examples():
    assert _g(0.00038957) == "   0.38957E-03"
    assert _g(-0.15826) == "  -0.15826    "
    assert _g(99999.5) == "   0.10000E+06"  # numpy's rounding of the tie, as before
    assert _g(0.0) == "   0.0000     "
    assert _g(float("nan")).strip() == "nan"
