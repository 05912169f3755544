"""Time-dependent alignment: run intervals of the parts that move, and per-interval global labels.

basf2's convention (``timedep`` of the Millepede collector): a list of ``(labels, [(event, run, exp), ...])``;
each entry makes the parameters of ``labels`` time dependent with a new set of parameters starting at each
listed (event, run, exp).  Here the entries name *parts* (``"PXD"``, ``"CDC"``, half shells, ...) instead of
raw labels, and boundaries are run boundaries (``event`` must be 0).  ``payload_boundaries`` (basf2's
``[[exp, run], ...]``) is the short form "every part changes at these runs".

All intervals are fitted in ONE global fit (Millepede style): the record writer maps the label of a
time-dependent part to its per-interval label according to the record's run (:meth:`LabelTranslator.translate`),
so the parts that do not move keep one set of parameters and are shared by all intervals.

This module depends on numpy only (no b2luca imports beyond the alignment package).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import TimedepConfigError
from .labels import interval_label, split_interval_label
from .mille import MilleRecords

__all__ = ["LabelTranslator", "TimedepPart", "find_jumps", "interval_of", "interval_ranges", "parse_timedep"]

Run = tuple[int, int]  # (experiment, run)


@dataclass(frozen=True)
class TimedepPart:
    """One time-dependent part: its name and the sorted runs (exp, run) at which a new interval starts."""

    part: str
    boundaries: tuple[Run, ...]

    @property
    def n_intervals(self) -> int:
        """Number of intervals (boundaries + 1)."""
        return len(self.boundaries) + 1


def interval_of(boundaries: Sequence[Run], exprun: Run) -> int:
    """Index of the interval of ``exprun``: the number of boundaries at or before it."""
    return sum(1 for b in boundaries if tuple(b) <= tuple(exprun))


def interval_ranges(boundaries: Sequence[Run], first: Run) -> list[tuple[Run, Run | None]]:
    """(first run, last run or None = open end) of each interval, starting at ``first``.

    Boundaries at or before ``first`` are ignored (they do not split what is being calibrated); the last
    run of an interval is the run before the next boundary (same experiment), or the last run of the
    previous experiment is unknown and given as (exp, -1) when the boundary starts a new experiment at run 0.
    """
    starts = [tuple(first)] + [tuple(b) for b in sorted(boundaries) if tuple(b) > tuple(first)]
    out: list[tuple[Run, Run | None]] = []
    for i, s in enumerate(starts):
        if i + 1 == len(starts):
            out.append(((s[0], s[1]), None))
            continue
        nxt = starts[i + 1]
        end = (nxt[0], nxt[1] - 1) if nxt[1] > 0 else (nxt[0] - 1, -1)
        out.append(((s[0], s[1]), end))
    return out


def _problem(key: str, where: str, what: str) -> str:
    return f"expert_config key {key!r}{where}: {what}"


def _int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def parse_timedep(cfg: Mapping[str, Any], known_parts: Sequence[str], source: str = "expert_config") -> list[TimedepPart]:
    """The time-dependent parts of ``cfg`` (keys ``timedep`` and ``payload_boundaries``), validated.

    ``timedep``: ``[[["PXD", ...], [[event, run, exp], ...]], ...]``; ``payload_boundaries``:
    ``[[exp, run], ...]`` for every part of ``known_parts``.  Every problem is collected and raised at once
    as :class:`TimedepConfigError` (one line each, naming ``source``, the key and the entry).
    """
    problems: list[str] = []
    bounds: dict[str, set[Run]] = {}
    timedep = cfg.get("timedep") or []
    if not isinstance(timedep, (list, tuple)):
        problems.append(_problem("timedep", "", f"expected a list of [parts, boundaries], got {timedep!r}"))
        timedep = []
    for i, entry in enumerate(timedep):
        where = f"[{i}]"
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            problems.append(_problem("timedep", where, f"expected [[parts...], [[event, run, exp], ...]], got {entry!r}"))
            continue
        parts, runs = entry
        if isinstance(parts, str):
            parts = [parts]
        if not isinstance(parts, (list, tuple)) or not parts:
            problems.append(_problem("timedep", where, f"expected a non-empty list of parts, got {parts!r}"))
            parts = []
        bad = [p for p in parts if p not in known_parts]
        if bad:
            problems.append(_problem("timedep", where, f"unknown part(s) {bad}; known: {', '.join(known_parts)}"))
        good_runs: list[Run] = []
        if not isinstance(runs, (list, tuple)) or not runs:
            problems.append(_problem("timedep", where, f"expected a non-empty list of [event, run, exp], got {runs!r}"))
            runs = []
        for j, b in enumerate(runs):
            if not (isinstance(b, (list, tuple)) and len(b) == 3 and all(_int(x) for x in b)):
                problems.append(_problem("timedep", f"{where}[1][{j}]", f"expected [event, run, exp] integers, got {b!r}"))
            elif b[0] != 0:
                problems.append(_problem("timedep", f"{where}[1][{j}]",
                                         f"event {b[0]} != 0: only run boundaries are supported (event 0)"))
            elif b[1] < 0 or b[2] < 0:
                problems.append(_problem("timedep", f"{where}[1][{j}]", f"run and experiment must be >= 0, got {b!r}"))
            else:
                good_runs.append((int(b[2]), int(b[1])))
        for p in parts:
            if p in known_parts:
                bounds.setdefault(p, set()).update(good_runs)
    pb = cfg.get("payload_boundaries") or []
    if not isinstance(pb, (list, tuple)):
        problems.append(_problem("payload_boundaries", "", f"expected a list of [exp, run], got {pb!r}"))
        pb = []
    for j, b in enumerate(pb):
        if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(_int(x) and x >= 0 for x in b)):
            problems.append(_problem("payload_boundaries", f"[{j}]", f"expected [exp, run] integers >= 0, got {b!r}"))
            continue
        for p in known_parts:
            bounds.setdefault(p, set()).add((int(b[0]), int(b[1])))
    if problems:
        raise TimedepConfigError(f"{source}: " + f"\n{source}: ".join(problems))
    return [TimedepPart(p, tuple(sorted(bounds[p]))) for p in known_parts if bounds.get(p)]


class LabelTranslator:
    """Maps the labels of time-dependent parts to per-interval labels, by the run of each record.

    ``part_labels``: {part: base labels of that part}; a label may belong to one time-dependent part only
    (overlapping parts, e.g. "VXD" and "PXD" both time dependent, are refused).
    """

    def __init__(self, part_labels: Mapping[str, np.ndarray], timedep: Sequence[TimedepPart]) -> None:
        self.timedep = list(timedep)
        self.part_labels = {p: np.unique(np.asarray(v, np.int64)) for p, v in part_labels.items()}
        owner: dict[int, str] = {}
        problems = []
        for t in self.timedep:
            for lab in self.part_labels[t.part].tolist():
                if lab in owner and owner[lab] != t.part:
                    problems.append(f"time-dependent parts {owner[lab]!r} and {t.part!r} share label {lab}")
                    break
                owner[lab] = t.part
        if problems:
            raise TimedepConfigError("; ".join(problems) + ": make only one of them time dependent")
        self._labels = np.array(sorted(owner), np.int64)
        self._part = np.array([next(i for i, t in enumerate(self.timedep) if t.part == owner[int(x)])
                               for x in self._labels], np.int64)

    @property
    def active(self) -> bool:
        """Whether any part is time dependent."""
        return bool(self.timedep)

    def intervals(self, exprun: Run) -> list[int]:
        """Interval index of ``exprun`` for each time-dependent part (in ``timedep`` order)."""
        return [interval_of(t.boundaries, exprun) for t in self.timedep]

    def translate(self, labels: np.ndarray, exprun: Run) -> np.ndarray:
        """Per-interval labels of ``labels`` for data of run ``exprun`` (other labels unchanged)."""
        labels = np.asarray(labels, np.int64)
        if not self.active or not self._labels.size:
            return labels
        k = np.array(self.intervals(exprun), np.int64)
        pos = np.clip(np.searchsorted(self._labels, labels), 0, self._labels.size - 1)
        hit = self._labels[pos] == labels
        out = labels.copy()
        out[hit] = interval_label(labels[hit], k[self._part[pos[hit]]])
        return out

    def translate_records(self, recs: MilleRecords, exprun: Run) -> MilleRecords:
        """A copy of ``recs`` (all of run ``exprun``) with per-interval labels."""
        if not self.active:
            return recs
        return replace(recs, glb_label=self.translate(recs.glb_label, exprun))

    def all_labels(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` plus the per-interval labels of their time-dependent members (for presigmas, constraints)."""
        labels = np.asarray(labels, np.int64)
        out = [labels]
        for i, t in enumerate(self.timedep):
            mine = labels[np.isin(labels, self._labels[self._part == i])]
            out += [interval_label(mine, np.full(mine.size, k, np.int64)) for k in range(1, t.n_intervals)]
        return np.concatenate(out)

    def interval_values(self, values: Mapping[int, float], base: np.ndarray, part: str, k: int) -> np.ndarray:
        """Values of ``base`` labels in interval ``k`` of ``part`` (labels not of that part: their one value)."""
        base = np.asarray(base, np.int64)
        mine = np.isin(base, self.part_labels.get(part, np.zeros(0, np.int64)))
        labs = np.where(mine, interval_label(base, np.full(base.size, k, np.int64)), base)
        return np.array([values.get(int(x), np.nan) for x in labs.ravel()]).reshape(base.shape)

    @staticmethod
    def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(base label, interval) of labels."""
        return split_interval_label(labels)


def find_jumps(runs: Sequence[Run], values: np.ndarray, errors: np.ndarray, k_sigma: float,
               min_jump: float = 0.0) -> list[tuple[Run, float, float]]:
    """Runs where a monitored quantity jumps: the next run's value differs by more than ``k_sigma`` combined
    errors AND more than ``min_jump`` (in any component).

    ``values``/``errors``: (n_runs, n) per run (NaN: not measured in that run, skipped: the comparison is with
    the previous measured run).  Returns (run, largest jump, its significance) per boundary found.
    """
    values = np.atleast_2d(np.asarray(values, float))
    errors = np.atleast_2d(np.asarray(errors, float))
    ok = np.isfinite(values) & np.isfinite(errors) & (errors > 0)
    out: list[tuple[Run, float, float]] = []
    prev: int | None = None
    for i in range(len(runs)):
        if not ok[i].any():
            continue
        if prev is not None:
            both = ok[i] & ok[prev]
            d = np.where(both, values[i] - values[prev], 0.0)
            s = np.where(both, np.hypot(errors[i], errors[prev]), np.inf)
            sig = np.abs(d) / s
            big = both & (sig > k_sigma) & (np.abs(d) > min_jump)
            if big.any():
                j = int(np.argmax(np.where(big, sig, -1.0)))
                out.append(((int(runs[i][0]), int(runs[i][1])), float(d[j]), float(sig[j])))
        prev = i
    return out
