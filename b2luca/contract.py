"""The contract between the native runner and the Python scripts in ``calibrations/``.

A native calibration script declares ``settings = CalibrationSettings(...)`` (see
:mod:`b2luca.catalogue`) and defines::

    def calibrate(job: CalibrationJob) -> None:
        ...  # read job.input_files, compute, then job.output_db.store(name, arrays, iov)

A validation script in ``calibrations/validations/`` declares ``settings = ValidationSettings(...)``
and defines (the basf2 signature plus keyword extras)::

    def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs) -> Verdict

where ``kwargs`` may hold ``reference_db``: a :class:`b2luca.conditions.DatabaseChain` with the truth
(simulation) or None. Plots and CSV go to the current working directory; the verdict says pass/fail.

The files both sides read: ``input_data.json`` (:func:`read_input_data`), ``caf_config.json``
(:func:`chain_from_caf_config`) and the output databases under ``OUTPUT_DB_DIR`` of the job directory.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from b2luca.atomic import write_json_atomic
from b2luca.iov import ExpRun, IoV

if TYPE_CHECKING:  # b2luca.conditions is imported lazily so this module never depends on it at runtime
    from b2luca.conditions import DatabaseChain, LocalDatabase

__all__ = ["CALIBRATE", "OUTPUT_DB_DIR", "RUN_VALIDATION", "CalibrationJob", "Verdict", "CalibrateFunction",
           "ValidationFunction", "chain_from_caf_config", "read_input_data"]

#: Name of the function a native calibration script defines.
CALIBRATE = "calibrate"
#: Name of the function a validation script defines.
RUN_VALIDATION = "run_validation"
#: Folder of a job directory holding one output database per calibration (``<OUTPUT_DB_DIR>/<name>/``),
#: the layout b2caf-prompt-run leaves.
OUTPUT_DB_DIR = "caf_outputdb_results"


@dataclass
class CalibrationJob:
    """Everything a native ``calibrate(job)`` gets from the runner.

    ``input_files`` maps each of the script's ``input_data_names`` to ``[(file, ExpRun), ...]``
    (the content of input_data.json); ``expert_config`` is the script defaults merged with the
    bucket's overrides; payloads are stored in ``output_db`` (the layout of
    ``caf_outputdb_results/<name>/``), normally with an IoV open-ended from the first run of
    ``requested_iov``; ``database_chain`` holds the constants valid so far (first match wins).
    """

    name: str
    input_files: dict[str, list[tuple[Path, ExpRun]]]
    requested_iov: IoV
    expert_config: dict[str, Any]
    output_db: "LocalDatabase"
    database_chain: "DatabaseChain"
    work_dir: Path
    log: logging.Logger

    def files(self, input_data_name: str) -> list[Path]:
        """The files of one input data name (KeyError names the known ones)."""
        if input_data_name not in self.input_files:
            raise KeyError(f"{self.name}: no input data named {input_data_name!r}; "
                           f"known: {', '.join(self.input_files) or '(none)'}")
        return [Path(path) for path, _ in self.input_files[input_data_name]]

    @property
    def output_iov(self) -> IoV:
        """The prompt IoV: open-ended from the first run of the requested IoV."""
        return IoV(self.requested_iov.exp_low, self.requested_iov.run_low, -1, -1)


@dataclass
class Verdict:
    """A validation's result: pass/fail, named figures (numbers or short strings), plot files, message."""

    passed: bool
    figures: dict[str, float | str]
    plots: list[str] = field(default_factory=list)
    message: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.passed, bool):
            # numpy.bool_ is common in validation code; accept it, reject everything else
            dtype = getattr(self.passed, "dtype", None)
            if getattr(dtype, "kind", None) == "b" and getattr(self.passed, "shape", None) == ():
                self.passed = bool(self.passed)
            else:
                raise TypeError(f"Verdict.passed must be a bool, got {self.passed!r}")
        if not isinstance(self.figures, dict):
            raise TypeError(f"Verdict.figures must be a dict, got {type(self.figures).__name__}")
        clean: dict[str, float | str] = {}
        for key, value in self.figures.items():
            if not isinstance(key, str):
                raise TypeError(f"Verdict.figures keys must be strings, got {key!r}")
            if isinstance(value, str):
                clean[key] = value
            elif isinstance(value, numbers.Real):  # includes numpy scalars and bool
                clean[key] = float(value)
            else:
                raise TypeError(f"Verdict.figures[{key!r}] must be a number or a string, got {value!r}")
        self.figures = clean
        self.plots = [str(p) for p in self.plots]
        self.message = str(self.message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; non-finite figures become strings ("nan", "inf")."""
        figures = {k: (v if isinstance(v, str) or math.isfinite(v) else repr(v)) for k, v in self.figures.items()}
        return {"passed": self.passed, "figures": figures, "plots": list(self.plots), "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        """Inverse of :meth:`to_dict` (figures written as "nan"/"inf" stay strings)."""
        try:
            return cls(passed=data["passed"], figures=dict(data.get("figures", {})),
                       plots=list(data.get("plots", [])), message=data.get("message", ""))
        except KeyError as exc:
            raise ValueError(f"verdict is missing the key {exc}") from None

    def save(self, path: Path) -> None:
        """Write the verdict as JSON atomically (temporary file, then rename)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "Verdict":
        """Read a verdict written by :meth:`save`; a bad file raises ValueError naming it."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls.from_dict(data)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a valid verdict: {exc}") from None


def read_input_data(path: "str | os.PathLike[str]") -> dict[str, list[tuple[Path, ExpRun]]]:
    """input_data.json -> ``{name: [(file, ExpRun), ...]}`` with directories expanded to their ROOT files.

    A malformed entry raises ValueError naming the file, the input data name and the entry's index.
    """
    from .dataset import expand_input

    document = json.loads(Path(path).read_text())
    files: dict[str, list[tuple[Path, ExpRun]]] = {}
    for name, entries in document.items():
        files[name] = []
        for index, entry in enumerate(entries):
            try:
                location, (exp, run) = entry
            except (TypeError, ValueError):
                raise ValueError(f"{path}: {name}[{index}]: expected [path, [exp, run]], got {entry!r}") from None
            files[name].extend((f, ExpRun(int(exp), int(run))) for f in expand_input(location))
    return files


def chain_from_caf_config(config: dict[str, Any]) -> "DatabaseChain":
    """The database chain of a caf_config.json: testing payloads first, then the chain in order."""
    from .conditions import DatabaseChain, LocalDatabase

    from .paths import check_name, under

    databases = []
    bucket = None  # the bucket's own payloads (testing_payloads): reads from it are checked against depends_on
    if config.get("testing_payloads"):
        bucket = LocalDatabase(Path(config["testing_payloads"]).parent)
        databases.append(bucket)
    directory = config.get("b2luca", {}).get("conditions_directory")
    for entry in config.get("database_chain", []):
        path = Path(entry)
        if path.name == "database.txt":
            databases.append(LocalDatabase(path.parent))
        elif directory:
            databases.append(LocalDatabase(under(directory, check_name(entry, "database_chain entry"),
                                                 what="database_chain")))
        else:
            raise ValueError(f"global tag {entry!r} in database_chain cannot be resolved locally")
    return DatabaseChain(databases, bucket_database=bucket)


CalibrateFunction = Callable[[CalibrationJob], None]
ValidationFunction = Callable[..., Verdict]
