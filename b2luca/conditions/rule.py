"""The update/veto rule: should a validated payload replace the constants in force?

CMS's prompt calibration loop uploads automatically within thresholds; b2luca does the same per
calibration (``calibrations.upload`` in the bucket YAML: ``default`` plus one entry per calibration name).

**The rule.** A payload is compared with the *constants in force*: the payload of the same name that the
bucket's database chain (``conditions.database_chain``, without the prompt tag) resolves for the bucket's
first run.  Every array ``X`` of the new payload that has an error array ``X_error`` of the same shape,
and exists with that shape in the payload in force, contributes its elements with a finite value and a
finite, positive error (elements a calibration could not determine carry a NaN error and are left out);
a vector ``X`` of length ``n`` whose ``X_error`` is an ``(n, n)`` matrix contributes with that covariance
(``chi2 = d^T C^-1 d``, e.g. the beam-spot position):

- ``chi2 = sum(((new - old) / error)**2)`` over the ``n`` elements; the change's **significance** is the
  one-sided Gaussian equivalent of its chi-square probability, ``z = Phi^-1(1 - P(chi2_n >= chi2))``
  (computed from the log-probability, so very large changes give finite numbers); ``z = 0`` when the
  change is smaller than expected from the errors alone;
- ``max_change = max |new - old|`` and ``max_error = max error`` (in the payload's own units).

Outcomes, checked in this order:

1. ``vetoed`` — ``max_change`` above the rule's ``max_change``, ``max_error`` above ``max_error``, or ``z``
   above ``max_significance`` (each off when not set): nothing of the calibration is uploaded, the
   calibration's status is ``vetoed`` and the expert is asked to look;
2. ``not uploaded`` — ``z`` below ``min_significance`` (default 3): nothing to gain;
3. ``uploaded`` — otherwise.

A payload with nothing in force is uploaded (new constants); one without value/error pairs is uploaded
when its content differs from the one in force and not uploaded when identical.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
from scipy import special, stats

UPLOADED, NOT_UPLOADED, VETOED = "uploaded", "not uploaded", "vetoed"
ERROR_SUFFIX = "_error"


@dataclass(frozen=True)
class UploadRule:
    """Thresholds of one calibration (``None`` switches a veto off)."""

    min_significance: float = 3.0
    max_significance: float | None = None
    max_change: float | None = None
    max_error: float | None = None

    def describe(self) -> str:
        """The rule in one line, for the issue."""
        parts = [f"upload when significance >= {self.min_significance:g}"]
        for key, label in (("max_significance", "significance"), ("max_change", "max |change|"),
                           ("max_error", "max error")):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"veto when {label} > {value:g}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Decision:
    """The rule applied to one payload."""

    name: str
    outcome: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def upload(self) -> bool:
        return self.outcome == UPLOADED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def significance(chi2: float, ndf: int) -> float:
    """One-sided Gaussian equivalent of P(chi2_ndf >= chi2), >= 0."""
    if ndf <= 0:
        return 0.0
    log_p = float(stats.chi2.logsf(chi2, ndf))
    if not math.isfinite(log_p):  # beyond double precision: the Wilson-Hilferty normal approximation
        return max(0.0, ((chi2 / ndf) ** (1 / 3) - (1 - 2 / (9 * ndf))) / math.sqrt(2 / (9 * ndf)))
    if log_p >= math.log(0.5):
        return 0.0
    return float(-special.ndtri_exp(log_p))


def compare(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """chi2, ndf, significance, max |change| and max error over the value/error pairs; None if there are none."""
    chi2, ndf, max_change, max_error, keys = 0.0, 0, 0.0, 0.0, []
    for key, values in new.items():
        errors = new.get(key + ERROR_SUFFIX)
        if key.endswith(ERROR_SUFFIX) or errors is None or key not in old:
            continue
        values, errors, before = (np.asarray(a, dtype=float) for a in (values, errors, old[key]))
        if values.shape != before.shape:
            continue
        if values.ndim == 1 and errors.shape == (values.size, values.size):  # a covariance matrix
            part = _covariance_chi2(values - before, errors)
            if part is not None:
                chi2, ndf = chi2 + part[0], ndf + values.size
                max_change = max(max_change, float(np.max(np.abs(values - before))))
                max_error = max(max_error, part[1])
                keys.append(key)
            continue
        if values.shape != errors.shape:
            continue
        ok = np.isfinite(values) & np.isfinite(errors) & (errors > 0) & np.isfinite(before)
        if not ok.any():
            continue
        change = (values - before)[ok]
        chi2 += float(np.sum((change / errors[ok]) ** 2))
        ndf += int(ok.sum())
        max_change = max(max_change, float(np.max(np.abs(change))))
        max_error = max(max_error, float(np.max(errors[ok])))
        keys.append(key)
    if ndf == 0:
        return None
    return {"compared": keys, "n": ndf, "chi2": chi2, "significance": significance(chi2, ndf),
            "max_change": max_change, "max_error": max_error}


def _covariance_chi2(change: np.ndarray, cov: np.ndarray) -> tuple[float, float] | None:
    """(change^T cov^-1 change, largest error) for a positive-definite covariance; None otherwise."""
    if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(change))):
        return None
    try:
        factor = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return None
    solved = np.linalg.solve(factor, change)
    return float(solved @ solved), float(np.sqrt(np.max(np.diag(cov))))


def decide(name: str, new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray] | None,
           rule: UploadRule, same_content: bool = False) -> Decision:
    """Apply ``rule`` to payload ``name`` (``old``: the payload in force, or None)."""
    if old is None:
        return Decision(name, UPLOADED, "no payload in force: new constants")
    figures = compare(new, old)
    if figures is None:
        if same_content:
            return Decision(name, NOT_UPLOADED, "identical to the payload in force")
        return Decision(name, UPLOADED, "content differs from the payload in force (no value/error pairs to judge)")
    z, change, error = figures["significance"], figures["max_change"], figures["max_error"]
    vetoes = []
    if rule.max_change is not None and change > rule.max_change:
        vetoes.append(f"max |change| {change:.4g} > {rule.max_change:g}")
    if rule.max_error is not None and error > rule.max_error:
        vetoes.append(f"max error {error:.4g} > {rule.max_error:g}")
    if rule.max_significance is not None and z > rule.max_significance:
        vetoes.append(f"significance {z:.3g} > {rule.max_significance:g}")
    if vetoes:
        return Decision(name, VETOED, "; ".join(vetoes), figures)
    if z < rule.min_significance:
        return Decision(name, NOT_UPLOADED, f"significance {z:.3g} < {rule.min_significance:g}: nothing to gain",
                        figures)
    return Decision(name, UPLOADED, f"significance {z:.3g} >= {rule.min_significance:g}", figures)


def rule_for(rules: Mapping[str, Mapping[str, Any]], calibration: str) -> UploadRule:
    """The rule of ``calibration``: ``default`` merged with its own entry (``calibrations.upload``)."""
    merged = {**dict(rules.get("default", {})), **dict(rules.get(calibration, {}))}
    return UploadRule(**merged)


__all__ = ["Decision", "NOT_UPLOADED", "UPLOADED", "UploadRule", "VETOED", "compare", "decide", "rule_for",
           "significance"]
