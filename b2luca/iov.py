"""Intervals of validity (IoV) and experiment/run numbers, with basf2's conventions.

An ``IoV(exp_low, run_low, exp_high, run_high)`` is inclusive at both ends.  ``-1`` in the high
fields means an open end: ``run_high == -1`` is "to the last run of ``exp_high``" and
``exp_high == -1`` is "forever".  ``IoV(0, 0, -1, -1)`` is valid always.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import total_ordering

_OPEN = -1
_INF = float("inf")


@total_ordering
@dataclass(frozen=True)
class ExpRun:
    """One experiment/run pair, ordered by experiment then run."""

    exp: int
    run: int

    def __post_init__(self) -> None:
        if not (isinstance(self.exp, int) and isinstance(self.run, int)):
            raise TypeError(f"ExpRun needs integers, got {self.exp!r}, {self.run!r}")
        if self.exp < 0 or self.run < 0:
            raise ValueError(f"ExpRun({self.exp}, {self.run}): experiment and run must be >= 0")

    def __lt__(self, other: "ExpRun") -> bool:
        if not isinstance(other, ExpRun):
            return NotImplemented
        return (self.exp, self.run) < (other.exp, other.run)

    def __str__(self) -> str:
        return f"{self.exp},{self.run}"

    def as_list(self) -> list[int]:
        """``[exp, run]``, the form used in input_data.json."""
        return [self.exp, self.run]


def _low_key(exp: int, run: int) -> tuple[float, float]:
    return (exp, run)


def _high_key(exp: int, run: int) -> tuple[float, float]:
    if exp == _OPEN:
        return (_INF, _INF)
    if run == _OPEN:
        return (exp, _INF)
    return (exp, run)


@dataclass(frozen=True)
class IoV:
    """An inclusive interval of validity ``exp_low,run_low .. exp_high,run_high`` (-1 = open end)."""

    exp_low: int
    run_low: int
    exp_high: int = _OPEN
    run_high: int = _OPEN

    def __post_init__(self) -> None:
        for field in ("exp_low", "run_low", "exp_high", "run_high"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"IoV.{field} must be an int, got {value!r}")
        if self.exp_low < 0 or self.run_low < 0:
            raise ValueError(f"IoV {self}: the low end must be >= 0")
        if self.exp_high < _OPEN or self.run_high < _OPEN:
            raise ValueError(f"IoV {self}: the high end must be >= 0 or -1 (open)")
        if self.exp_high == _OPEN and self.run_high != _OPEN:
            raise ValueError(f"IoV {self}: an open experiment needs an open run (-1)")
        if _high_key(self.exp_high, self.run_high) < _low_key(self.exp_low, self.run_low):
            raise ValueError(f"IoV {self}: the high end lies before the low end")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def always(cls) -> "IoV":
        """The IoV valid for every run: ``0,0,-1,-1``."""
        return cls(0, 0, _OPEN, _OPEN)

    @classmethod
    def from_exprun(cls, first: ExpRun, last: ExpRun | None = None) -> "IoV":
        """IoV from ``first`` to ``last`` (open-ended when ``last`` is None)."""
        if last is None:
            return cls(first.exp, first.run, _OPEN, _OPEN)
        return cls(first.exp, first.run, last.exp, last.run)

    @classmethod
    def parse(cls, text: str) -> "IoV":
        """Parse ``"e1,r1,e2,r2"`` (spaces allowed around the commas)."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) != 4:
            raise ValueError(f"IoV {text!r}: expected four comma-separated integers e1,r1,e2,r2")
        try:
            values = [int(p) for p in parts]
        except ValueError as exc:
            raise ValueError(f"IoV {text!r}: expected four comma-separated integers e1,r1,e2,r2") from exc
        return cls(*values)

    @classmethod
    def from_list(cls, values: "list[int] | tuple[int, ...]") -> "IoV":
        """IoV from ``[exp_low, run_low, exp_high, run_high]`` (caf_config.json's requested_iov)."""
        if len(values) != 4:
            raise ValueError(f"IoV {values!r}: expected [exp_low, run_low, exp_high, run_high]")
        return cls(*(int(v) for v in values))

    # --- printing -----------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.exp_low},{self.run_low},{self.exp_high},{self.run_high}"

    def as_list(self) -> list[int]:
        """``[exp_low, run_low, exp_high, run_high]``."""
        return [self.exp_low, self.run_low, self.exp_high, self.run_high]

    # --- predicates ---------------------------------------------------------------------------
    @property
    def first(self) -> ExpRun:
        return ExpRun(self.exp_low, self.run_low)

    @property
    def is_open(self) -> bool:
        return self.exp_high == _OPEN or self.run_high == _OPEN

    @property
    def is_always(self) -> bool:
        return self == IoV.always()

    def contains(self, item: "ExpRun | IoV") -> bool:
        """True when the run (or the whole other IoV) lies inside this IoV."""
        if isinstance(item, ExpRun):
            key = (item.exp, item.run)
            return _low_key(self.exp_low, self.run_low) <= key <= _high_key(self.exp_high, self.run_high)
        if isinstance(item, IoV):
            return (_low_key(self.exp_low, self.run_low) <= _low_key(item.exp_low, item.run_low)
                    and _high_key(item.exp_high, item.run_high) <= _high_key(self.exp_high, self.run_high))
        raise TypeError(f"IoV.contains needs an ExpRun or IoV, got {type(item).__name__}")

    def __contains__(self, item: "ExpRun | IoV") -> bool:
        return self.contains(item)

    def overlaps(self, other: "IoV") -> bool:
        """True when the two IoVs share at least one run."""
        return self.intersection(other) is not None

    def intersection(self, other: "IoV") -> "IoV | None":
        """The common part of two IoVs, or None when they are disjoint."""
        low = max((self.exp_low, self.run_low), (other.exp_low, other.run_low))
        mine, theirs = _high_key(self.exp_high, self.run_high), _high_key(other.exp_high, other.run_high)
        high = (self.exp_high, self.run_high) if mine <= theirs else (other.exp_high, other.run_high)
        if _high_key(*high) < _low_key(*low):
            return None
        return IoV(low[0], low[1], high[0], high[1])

    def __and__(self, other: "IoV") -> "IoV | None":
        return self.intersection(other)
