"""Helpers shared by the native calibration and validation scripts (not a calibration itself).

Files whose name starts with ``_`` are not discovered by :mod:`b2luca.catalogue`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from b2luca.atomic import atomic_path
from b2luca.conditions import DatabaseChain, LocalDatabase
from b2luca.contract import OUTPUT_DB_DIR
from b2luca.iov import ExpRun, IoV


# --- calibration side ------------------------------------------------------------------------------
def first_exprun(requested_iov: "IoV | Sequence[int]") -> ExpRun:
    """The first run of a requested IoV (an IoV or ``[exp_low, run_low, exp_high, run_high]``)."""
    if isinstance(requested_iov, IoV):
        return ExpRun(requested_iov.exp_low, requested_iov.run_low)
    if isinstance(requested_iov, str):  # b2val-prompt-run passes every argument as text
        requested_iov = json.loads(requested_iov)
    values = list(requested_iov)
    if len(values) != 4:
        raise ValueError(f"requested_iov must be [exp_low, run_low, exp_high, run_high], got {requested_iov!r}")
    return ExpRun(int(values[0]), int(values[1]))


def previous_payload(chain: "DatabaseChain | None", name: str, exprun: ExpRun) -> dict[str, np.ndarray]:
    """The payload ``name`` in force for ``exprun`` in ``chain``; the nominal constants when none has it."""
    data = chain.read_or_none(name, exprun) if chain is not None else None
    if data is not None:
        return data
    from b2luca.reco.nominal import nominal_payloads

    return nominal_payloads()[name]


def require_files(files: Sequence[Path], what: str) -> None:
    """Raise a clear error when a calibration got no input files."""
    if not files:
        raise ValueError(f"no input files for {what}: check input_data.json and the input_data_filters")


# --- validation side -------------------------------------------------------------------------------
def expert_config_dict(expert_config: "Mapping[str, Any] | str | None") -> dict[str, Any]:
    """run_validation's expert_config as a dict: b2luca passes a dict, basf2's b2val-prompt-run JSON text."""
    if isinstance(expert_config, str):
        return dict(json.loads(expert_config or "{}"))
    return dict(expert_config or {})


def calibration_output(job_path: "str | os.PathLike[str]", calibration: str, payload: str) -> dict[str, np.ndarray]:
    """Read the newest revision of ``payload`` from ``<job_path>/caf_outputdb_results/<calibration>/``."""
    db = LocalDatabase(Path(job_path) / OUTPUT_DB_DIR / calibration)
    if not db.exists():
        raise FileNotFoundError(f"{db.database_txt}: the calibration left no output database")
    entries = [e for e in db.entries() if e.name == payload]
    if not entries:
        raise KeyError(f"{db.database_txt}: no payload {payload} stored by {calibration}")
    return db.read(entries[-1])


def truth_or_none(reference_db: "DatabaseChain | None", payload: str, requested_iov: Any) -> dict[str, np.ndarray] | None:
    """The truth payload valid for the first run of the requested IoV (None without a reference)."""
    if reference_db is None:
        return None
    return reference_db.read_or_none(payload, first_exprun(requested_iov))


def pull_figures(pulls: np.ndarray, k: float = 5.0) -> dict[str, float]:
    """Mean, width of the pulls and their statistical tolerances (k standard errors).

    For N unit-Gaussian pulls the mean has error 1/sqrt(N) and the width (RMS) error 1/sqrt(2N).
    """
    pulls = np.asarray(pulls, dtype=float)
    pulls = pulls[np.isfinite(pulls)]
    n = pulls.size
    if n == 0:
        return {"n": 0.0, "pull_mean": math.nan, "pull_width": math.nan, "pull_mean_tolerance": math.nan,
                "pull_width_tolerance": math.nan, "max_abs_pull": math.nan, "max_abs_pull_limit": math.nan}
    mean = float(pulls.mean())
    width = float(np.sqrt(np.mean((pulls - mean) ** 2))) if n > 1 else float(abs(pulls[0]))
    return {"n": float(n), "pull_mean": mean, "pull_width": width,
            "pull_mean_tolerance": k / math.sqrt(n), "pull_width_tolerance": k / math.sqrt(2 * n),
            "max_abs_pull": float(np.max(np.abs(pulls))), "max_abs_pull_limit": max_abs_pull_limit(n)}


def max_abs_pull_limit(n: int, p_false: float = 1e-3) -> float:
    """|pull| that N unit Gaussians all stay below with probability 1 - p_false."""
    from scipy.special import ndtri

    p_each = p_false / max(int(n), 1)
    return float(-ndtri(p_each / 2))


def pulls_ok(fig: Mapping[str, float]) -> tuple[bool, list[str]]:
    """Check :func:`pull_figures` against their tolerances; returns (ok, reasons)."""
    reasons = []
    if fig["n"] == 0:
        return False, ["no pulls to check"]
    if abs(fig["pull_mean"]) > fig["pull_mean_tolerance"]:
        reasons.append(f"pull mean {fig['pull_mean']:.3f} outside ±{fig['pull_mean_tolerance']:.3f}")
    if abs(fig["pull_width"] - 1.0) > fig["pull_width_tolerance"]:
        reasons.append(f"pull width {fig['pull_width']:.3f} outside 1±{fig['pull_width_tolerance']:.3f}")
    if fig["max_abs_pull"] > fig["max_abs_pull_limit"]:
        reasons.append(f"max |pull| {fig['max_abs_pull']:.2f} above {fig['max_abs_pull_limit']:.2f}")
    return not reasons, reasons


@dataclass(frozen=True)
class SplitHalf:
    """Even-half versus odd-half fits of the same constants, and the stored result against the even half.

    ``pulls``: (even - odd) / combined error per element (NaN where an element is not calibrated or
    either half has no finite error); ``stored_figures``: :func:`pull_figures` of (stored - even) / error of that
    difference, keys prefixed ``stored_``; ``reasons``: why those fail :func:`pulls_ok`;
    ``reference``: the odd half's values (for plots and CSV).
    """

    pulls: np.ndarray
    stored_figures: dict[str, float]
    reasons: list[str]
    reference: np.ndarray


def split_half(stored: Mapping[str, np.ndarray], halves: Sequence[Mapping[str, np.ndarray]], key: str,
               error_key: str, calibrated: np.ndarray, k: float) -> SplitHalf:
    """Compare the fits of the even and odd events (``halves``) of the values ``key`` with errors
    ``error_key``; both and ``stored`` carry ``n_hits`` per element.  For nested samples the
    difference stored - even half has variance ``e_full^2 (n_full / n_half - 1)``."""
    e0, e1 = halves[0][error_key], halves[1][error_key]
    both = np.isfinite(e0) & np.isfinite(e1) & calibrated
    diff = halves[0][key] - halves[1][key]
    pulls = np.where(both, diff / np.sqrt(np.where(both, e0 ** 2 + e1 ** 2, 1.0)), np.nan)
    err = np.asarray(stored[error_key], float)
    n_full = np.asarray(stored["n_hits"], float)
    n_half = np.asarray(halves[0]["n_hits"], float)
    v = np.where(both, err ** 2 * (n_full / np.maximum(n_half, 1) - 1), np.nan)
    stored_pulls = (np.asarray(stored[key], float) - halves[0][key]) / np.sqrt(np.where(v > 0, v, np.nan))
    sf = pull_figures(stored_pulls, k)
    return SplitHalf(pulls=pulls, stored_figures={f"stored_{name}": value for name, value in sf.items()},
                     reasons=[f"stored result vs data: {r}" for r in pulls_ok(sf)[1]], reference=halves[1][key])


def write_csv(path: "str | os.PathLike[str]", columns: Mapping[str, Iterable[Any]]) -> str:
    """Write equal-length columns to a CSV file atomically; returns the file name."""
    path = Path(path)
    names = list(columns)
    cols = [list(v) for v in columns.values()]
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise ValueError(f"{path}: CSV columns have different lengths {sorted(lengths)}")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(zip(*cols))
    return str(path)


def save_figure(fig: Any, path: "str | os.PathLike[str]") -> str:
    """Save a matplotlib figure atomically as PNG and close it; returns the file name."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
    return str(path)


def pyplot():
    """matplotlib.pyplot with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def pull_histogram(ax: Any, pulls: np.ndarray, title: str) -> None:
    """Histogram of pulls with the unit Gaussian overlaid."""
    pulls = np.asarray(pulls, dtype=float)
    pulls = pulls[np.isfinite(pulls)]
    bins = np.linspace(-5, 5, 41)
    ax.hist(np.clip(pulls, -4.99, 4.99), bins=bins, histtype="step", label=f"N={pulls.size}")
    if pulls.size:
        x = np.linspace(-5, 5, 200)
        ax.plot(x, pulls.size * (bins[1] - bins[0]) * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi), "--",
                label="unit Gaussian")
    ax.set_xlabel("pull (fitted - true) / error")
    ax.set_title(title)
    ax.legend(fontsize=7)


def limit_files_per_run(entries: Sequence[tuple[Path, ExpRun]], max_files_per_run: int | None) -> list[Path]:
    """The first ``max_files_per_run`` files of every run (all when None or <= 0), in input order."""
    if not max_files_per_run or max_files_per_run <= 0:
        return [Path(p) for p, _ in entries]
    seen: dict[ExpRun, int] = {}
    out = []
    for path, exprun in entries:
        if seen.get(exprun, 0) < max_files_per_run:
            seen[exprun] = seen.get(exprun, 0) + 1
            out.append(Path(path))
    return out


def read_branches(files: Sequence["str | os.PathLike[str]"], tree: str, branches: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenate ``branches`` of ``tree`` over ROOT ``files`` (:func:`read_tables` of one tree)."""
    return read_tables(files, {tree: branches})[tree]


def read_tables(files: Sequence["str | os.PathLike[str]"],
                trees: Mapping[str, Sequence[str]]) -> dict[str, dict[str, np.ndarray]]:
    """``{tree: {branch: array}}``: the ``branches`` of each tree, concatenated over ROOT ``files``, each file
    read once for all trees.  A file's whole tables are decompressed (one container tree per file,
    :mod:`b2luca.rootio`); only the given columns are unpacked and returned.

    A missing file, tree or branch raises ValueError naming the file and the tree/branch.
    """
    from b2luca.rootio import read_trees

    parts: dict[str, dict[str, list[np.ndarray]]] = {t: {b: [] for b in branches} for t, branches in trees.items()}
    for f in files:
        data = read_trees(f, {t: list(branches) for t, branches in trees.items()})  # RootReadError names the file
        for t, columns in parts.items():
            for b, chunks in columns.items():
                chunks.append(np.asarray(data[t][b]))
    return {t: {b: (np.concatenate(v) if v else np.zeros(0)) for b, v in columns.items()} for t, columns in parts.items()}


def group_mean(index: np.ndarray, values: np.ndarray, n_groups: int, outlier_sigma: float = 0.0,
               iterations: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-group mean, its error (RMS/sqrt(n)), the RMS and the count, with optional iterative
    rejection of entries further than ``outlier_sigma`` RMS from their group mean (vectorised)."""
    index = np.asarray(index, dtype=np.int64)
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(values)
    for it in range(max(1, iterations if outlier_sigma > 0 else 1)):
        n = np.bincount(index[keep], minlength=n_groups).astype(float)
        s1 = np.bincount(index[keep], values[keep], minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / n
            s2 = np.bincount(index[keep], (values[keep] - mean[index[keep]]) ** 2, minlength=n_groups)
            rms = np.sqrt(s2 / np.maximum(n - 1, 1))
        if outlier_sigma <= 0 or it == iterations - 1:
            break
        keep = np.isfinite(values) & (np.abs(values - mean[index]) <= outlier_sigma * rms[index])
    with np.errstate(invalid="ignore", divide="ignore"):
        error = rms / np.sqrt(n)
    return mean, error, rms, n.astype(np.int64)
