"""The alignment result object, pede-like summary and the ``millepede.res`` table."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic

__all__ = ["AlignmentResult", "write_millepede_res", "read_millepede_res"]


@dataclass
class AlignmentResult:
    """Outcome of an alignment fit. Arrays are per label (sorted by label)."""

    labels: np.ndarray
    corrections: np.ndarray  # fitted correction (value − initial); 0 for fixed parameters
    errors: np.ndarray | None  # √diag(cov) on the constraint surface; None for MINRES; 0 for fixed
    initial: np.ndarray
    presigma: np.ndarray
    fixed: np.ndarray  # bool
    fixed_reason: dict[int, str]
    chi2: float
    ndf: int
    method: str
    exact: bool
    n_records: int
    n_used: int
    rejected: dict[str, int]
    timings: dict[str, float]
    iterations: int = 1
    n_meas: int = 0
    constraint_residual: float = 0.0
    downweighted_fraction: float = 0.0
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def values(self) -> np.ndarray:
        return self.initial + self.corrections

    @property
    def chi2_ndf(self) -> float:
        return self.chi2 / self.ndf if self.ndf > 0 else float("nan")

    @property
    def fixed_labels(self) -> np.ndarray:
        return self.labels[self.fixed]

    def as_dict(self) -> dict[int, tuple[float, float]]:
        """label -> (correction, error)."""
        err = self.errors if self.errors is not None else np.full(self.labels.size, np.nan)
        return {int(lab): (float(c), float(e)) for lab, c, e in zip(self.labels, self.corrections, err)}

    def summary(self) -> str:
        """A pede-like printout: χ²/ndf, counts, time per phase."""
        lines = [
            f"Alignment fit, method {self.method} ({'exact' if self.exact else 'iterative'}), "
            f"{self.iterations} iteration(s)",
            f"  records read {self.n_records}, used {self.n_used}, rejected {self.n_records - self.n_used}"
            + (f" ({', '.join(f'{k} {v}' for k, v in self.rejected.items())})" if self.rejected else ""),
            f"  measurements used {self.n_meas}"
            + (f", down-weighted fraction {self.downweighted_fraction:.4f}" if self.downweighted_fraction else ""),
            f"  parameters {self.labels.size}: free {int((~self.fixed).sum())}, fixed {int(self.fixed.sum())}",
            f"  Sum(Chi^2)/Sum(Ndf) = {self.chi2:.6g} / {self.ndf} = {self.chi2_ndf:.6f}",
        ]
        if self.constraint_residual:
            lines.append(f"  max constraint residual {self.constraint_residual:.3g}")
        threads = f" ({self.info['threads']} thread(s) for the data pass)" if self.info.get("threads") else ""
        lines.append("  time per phase [s]: " + ", ".join(f"{k} {v:.3f}" for k, v in self.timings.items())
                     + threads)
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        return "\n".join(lines)


def _np_round(x: float, decimals: int) -> float:
    """``round(np.float64(x), decimals)`` for ``decimals >= 0`` (numpy's rounding: scale by 10**decimals,
    round half to even, scale back; Python's ``round(x, n)`` rounds the exact binary value instead, which
    differs at ties such as 99999.5)."""
    f = 10.0 ** decimals
    return round(x * f) / f


def _g(x: float) -> str:
    """Fortran-like G14.5 formatting, as pede prints (``0.38957E-03``, ``-0.15826    ``).

    Plain floats and the math module: the numpy scalar functions cost ~10 µs a value, a third of writing a
    3k-parameter millepede.res (tests/alignment/test_result_format.py checks the same text as with numpy's)."""
    x = float(x)
    if not math.isfinite(x):
        return f"{x!s:>14}"
    ax = abs(x)
    if ax == 0.0:
        return "   0.0000     "
    e = math.floor(math.log10(ax)) + 1
    if 0 <= e <= 5 and _np_round(ax, 5 - e) < 1e5:
        return f"{x:.{max(5 - e, 0)}f}".rjust(10) + "    "
    mant = x / 10.0 ** e
    if _np_round(abs(mant), 5) >= 1.0:
        mant /= 10.0
        e += 1
    return f"{mant:.5f}E{e:+03d}".rjust(14)


def write_millepede_res(path: str | os.PathLike, result: AlignmentResult) -> None:
    """Write the ``millepede.res`` table (label, value, presigma[, difference, error]) atomically."""
    path = Path(path)
    out = [" Parameter   ! first 3 elements per line are significant (if used as input)"]
    # plain Python lists: indexing numpy arrays value by value costs more than the formatting
    labels = result.labels.tolist()
    values = result.values.tolist()
    corr = result.corrections.tolist()
    fixed = result.fixed.tolist()
    presigma = result.presigma.tolist()
    err = result.errors.tolist() if result.errors is not None and result.exact else None
    for i, lab in enumerate(labels):
        ps = -1.0 if fixed[i] else presigma[i]
        line = f"{int(lab):10d}  {_g(values[i])} {ps:10.4f}"
        if not fixed[i]:
            line += f"  {_g(corr[i])}"
            if err is not None:
                line += f" {_g(err[i])}"
        out.append(line.rstrip())
    text = "\n".join(out) + "\n"
    write_text_atomic(path, text)


def read_millepede_res(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``millepede.res`` table: arrays label, value, presigma, difference, error (NaN if absent)."""
    labels, vals, ps, diff, err = [], [], [], [], []
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            tok = line.split("!")[0].split()
            if not tok or not tok[0].lstrip("-").isdigit():
                continue
            try:
                f = [float(t.replace("D", "E")) for t in tok[1:5]]
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: bad line {line.strip()!r}") from exc
            f += [np.nan] * (4 - len(f))
            labels.append(int(tok[0]))
            vals.append(f[0])
            ps.append(f[1])
            diff.append(f[2])
            err.append(f[3])
    return {"label": np.asarray(labels, np.int64), "value": np.asarray(vals), "presigma": np.asarray(ps),
            "difference": np.asarray(diff), "error": np.asarray(err)}
