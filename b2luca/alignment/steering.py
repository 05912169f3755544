"""Steering and text files in ``pede``'s syntax (steering, constraint and parameter files).

Method names of pede map onto ours:

==================  ==============  =======================================================
pede keyword        our method      exact?
==================  ==============  =======================================================
inversion           auto            yes (dense LAPACK for small n, else sparse Cholesky)
diagonalization     dense           yes (dense Cholesky; pede diagonalises, same solution)
decomposition       dense           yes
fullMINRES          minres          no: iterative, rtol 1e-12 (stated in the result), no errors
sparseMINRES        minres          no: same
(ours) sparse       sparse          yes: supernodal sparse Cholesky + selected inversion
==================  ==============  =======================================================
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from .errors import SteeringError

log = logging.getLogger(__name__)

PEDE_METHODS = {
    "inversion": "auto",
    "diagonalization": "dense",
    "decomposition": "dense",
    "fullminres": "minres",
    "sparseminres": "minres",
    "fullminres-qlp": "minres",
    "sparseminres-qlp": "minres",
    # our own names are accepted too
    "auto": "auto",
    "sparse": "sparse",
    "dense": "dense",
    "minres": "minres",
}
EXACT_METHODS = {"auto", "sparse", "dense"}


@dataclass
class Constraint:
    """Σ factor_i · p_i = value (``Constraint``) or a measurement of that sum with ``sigma``."""

    value: float
    labels: np.ndarray
    factors: np.ndarray
    sigma: float | None = None  # None: exact constraint; else a 'Measurement'
    origin: str = ""


@dataclass
class ParameterSpec:
    label: int
    initial: float = 0.0
    presigma: float = 0.0  # > 0: soft prior; == 0: free; < 0: fixed


@dataclass
class FitOptions:
    """pede's fit options (defaults are pede's), shared by a steering file and a problem to solve."""

    method: str = "auto"  # ours: auto|sparse|dense|minres (see PEDE_METHODS)
    iterations: int = 1
    dchi2: float = 0.1
    entries: int = 0
    chiscut: tuple[float, float] | None = None
    outlierdownweighting: int = 0
    dwfractioncut: float = 0.0
    hugecut: float | None = None


@dataclass
class Steering(FitOptions):
    """Everything a steering file sets."""

    cfiles: list[Path] = field(default_factory=list)
    ffiles: list[Path] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    parameters: dict[int, ParameterSpec] = field(default_factory=dict)
    pede_method: str = "inversion"
    threads: tuple[int, ...] = ()
    source: str = "<memory>"
    warnings: list[str] = field(default_factory=list)


def _floats(tok: list[str], where: str, n: int) -> list[float]:
    try:
        return [float(t.replace("D", "E").replace("d", "e")) for t in tok[:n]]
    except ValueError as exc:
        raise SteeringError(f"{where}: expected numbers, got {' '.join(tok)!r}") from exc


def _strip(line: str) -> str:
    for c in ("!", "*"):
        i = line.find(c)
        if i == 0 or (c == "!" and i > 0):
            line = line[:i]
    return line.strip()


_KEYWORDS = {"cfiles", "fortranfiles", "constraint", "constraints", "measurement", "measurements",
             "parameter", "parameters", "method", "entries", "chiscut", "outlierdownweighting",
             "dwfractioncut", "hugecut", "threads", "end", "printrecord", "printcounts", "bandwidth",
             "matiter", "matmoni", "memorydebug", "wolfe", "linesearch", "regularization",
             "regularisation", "presigmas", "pedesigma", "scaleerrors", "subito", "force", "histprint",
             "histbins", "monitorresiduals", "monitorpulls", "mreqenf", "maxrecordsize", "localfit",
             "errlabels", "fixglobals", "compress", "skipemptyrecords", "globalcorr", "checkinput"}
_IGNORED = _KEYWORDS - {"cfiles", "fortranfiles", "constraint", "constraints", "measurement", "measurements",
                        "parameter", "parameters", "method", "entries", "chiscut", "outlierdownweighting",
                        "dwfractioncut", "hugecut", "threads", "end"}


def read_steering(path: str | os.PathLike) -> Steering:
    """Parse a pede steering file; file names are resolved relative to the steering file's folder.

    Text files listed after ``Cfiles``/``Fortranfiles`` whose name does not look binary (``.txt``, or a
    first line starting with a pede keyword) are read as constraint/parameter files, as pede does.
    """
    path = Path(path)
    st = Steering(source=str(path))
    try:
        text = path.read_text()
    except OSError as exc:
        raise SteeringError(f"{path}: cannot read steering file: {exc}") from exc
    _parse_text(text, path, st, top=True)
    return st


def _is_text_file(p: Path) -> bool:
    if p.suffix.lower() in {".txt", ".dat", ".steer"} and not p.name.endswith(".gz"):
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    if head[:2] == b"\x1f\x8b":
        return False
    try:
        s = head.decode("ascii")
    except UnicodeDecodeError:
        return False
    first = _strip(s.splitlines()[0] if s else "").split()
    return bool(first) and first[0].lower() in _KEYWORDS


def read_text_file(path: str | os.PathLike, st: Steering | None = None) -> Steering:
    """Parse a constraint / parameter text file (adds to ``st`` if given)."""
    path = Path(path)
    st = st or Steering(source=str(path))
    try:
        text = path.read_text()
    except OSError as exc:
        raise SteeringError(f"{path}: cannot read: {exc}") from exc
    _parse_text(text, path, st, top=False)
    return st


def _parse_text(text: str, path: Path, st: Steering, top: bool) -> None:
    base = path.parent
    mode: str | None = None  # 'cfiles', 'ffiles', 'constraint', 'parameter'
    cur: dict | None = None

    def flush() -> None:
        nonlocal cur
        if cur is not None:
            st.constraints.append(Constraint(
                value=cur["value"], labels=np.asarray(cur["labels"], np.int64),
                factors=np.asarray(cur["factors"], np.float64), sigma=cur["sigma"], origin=cur["origin"]))
            cur = None

    for lineno, raw in enumerate(text.splitlines(), start=1):
        where = f"{path}:{lineno}"
        line = _strip(raw)
        if not line:
            continue
        tok = line.split()
        key = tok[0].lower()
        if key in _KEYWORDS:
            flush()
            mode = None
            if key == "end":
                if top:
                    break
                continue
            if key == "cfiles":
                mode = "cfiles"
            elif key == "fortranfiles":
                mode = "ffiles"
            elif key in ("constraint", "constraints", "measurement", "measurements"):
                if len(tok) < 2:
                    raise SteeringError(f"{where}: {tok[0]} needs a value")
                vals = _floats(tok[1:], where, 2 if key.startswith("measurement") else 1)
                sigma = None
                if key.startswith("measurement"):
                    if len(vals) < 2 or vals[1] <= 0:
                        raise SteeringError(f"{where}: Measurement needs a value and a positive sigma")
                    sigma = vals[1]
                cur = {"value": vals[0], "labels": [], "factors": [], "sigma": sigma, "origin": where}
                mode = "constraint"
            elif key in ("parameter", "parameters"):
                mode = "parameter"
            elif key == "method":
                if len(tok) < 2 or tok[1].lower() not in PEDE_METHODS:
                    raise SteeringError(f"{where}: unknown method {' '.join(tok[1:])!r}; "
                                        f"known: {', '.join(sorted(PEDE_METHODS))}")
                st.pede_method = tok[1]
                st.method = PEDE_METHODS[tok[1].lower()]
                if len(tok) > 2:
                    st.iterations = max(1, int(_floats(tok[2:], where, 1)[0]))
                if len(tok) > 3:
                    st.dchi2 = _floats(tok[3:], where, 1)[0]
            elif key == "entries":
                st.entries = int(_floats(tok[1:], where, 1)[0]) if len(tok) > 1 else 0
            elif key == "chiscut":
                v = _floats(tok[1:], where, 2) if len(tok) > 1 else [0.0]
                st.chiscut = (v[0], v[1] if len(v) > 1 else v[0])
            elif key == "outlierdownweighting":
                st.outlierdownweighting = int(_floats(tok[1:], where, 1)[0]) if len(tok) > 1 else 0
            elif key == "dwfractioncut":
                st.dwfractioncut = _floats(tok[1:], where, 1)[0] if len(tok) > 1 else 0.0
            elif key == "hugecut":
                st.hugecut = _floats(tok[1:], where, 1)[0] if len(tok) > 1 else None
            elif key == "threads":
                st.threads = tuple(int(x) for x in _floats(tok[1:], where, 3))
            elif key in _IGNORED:
                msg = f"{where}: keyword {tok[0]!r} is accepted but has no effect here"
                st.warnings.append(msg)
                log.info(msg)
            continue
        if mode in ("cfiles", "ffiles"):
            p = Path(tok[0])
            p = p if p.is_absolute() else base / p
            if _is_text_file(p):
                read_text_file(p, st)
            else:
                (st.cfiles if mode == "cfiles" else st.ffiles).append(p)
            continue
        if mode == "constraint" and cur is not None:
            if len(tok) % 2:
                raise SteeringError(f"{where}: expected 'label factor' pairs, got {line!r}")
            try:
                for j in range(0, len(tok), 2):
                    cur["labels"].append(int(tok[j]))
                    cur["factors"].append(float(tok[j + 1].replace("D", "E")))
            except ValueError as exc:
                raise SteeringError(f"{where}: bad 'label factor' line {line!r}") from exc
            continue
        if mode == "parameter":
            try:
                lab = int(tok[0])
            except ValueError as exc:
                raise SteeringError(f"{where}: bad parameter label {tok[0]!r}") from exc
            vals = _floats(tok[1:], where, 2)
            st.parameters[lab] = ParameterSpec(lab, vals[0] if vals else 0.0, vals[1] if len(vals) > 1 else 0.0)
            continue
        msg = f"{where}: unknown keyword or stray line {line!r} ignored"
        st.warnings.append(msg)
        log.warning(msg)
    flush()
