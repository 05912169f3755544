"""What every runner shares: the result of running one calibration or validation script."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from ..contract import OUTPUT_DB_DIR
from ..errors import RunnerError as RunnerError  # re-exported by b2luca.runners
from ..paths import check_component, under

if TYPE_CHECKING:
    from .caf_state import CafState


@dataclass(frozen=True)
class RunResult:
    """The outcome of one script run: exit code, log file and duration."""

    returncode: int
    log_path: Path
    duration: float
    command: tuple[str, ...]
    #: the CAF's calibrations after the run (basf2 runner; empty for the native one)
    caf_state: tuple["CafState", ...] = ()

    @property
    def ok(self) -> bool:
        """Exit code 0 and no calibration in a failed CAF state."""
        return self.returncode == 0 and not any(s.failed for s in self.caf_state)


def output_database(work_dir: Path, calibration_name: str) -> Path:
    """``<work_dir>/caf_outputdb_results/<CalibrationName>`` (the layout b2caf-prompt-run leaves)."""
    return under(Path(work_dir) / OUTPUT_DB_DIR, check_component(calibration_name, "calibration name"),
                 what="calibration output database")


def log_tail(path: Path, lines: int = 40, max_chars: int = 6000) -> str:
    """The last lines of a log file (empty when missing)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return tail[-max_chars:]


def _die_with_parent(number: int = signal.SIGKILL) -> None:
    """In the child, before exec: get SIGKILL (or ``number``) when the parent dies (Linux), so no orphan outlives a
    killed run."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(number))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the process group kill on timeout still applies
        pass


def run_logged(command: Sequence[str], cwd: Path, log_path: Path, env: dict[str, str] | None = None,
               timeout: float | None = None) -> RunResult:
    """Run ``command`` in ``cwd`` with stdout+stderr appended to ``log_path``; never raises on failure.

    The child gets its own process group so a timeout (or the caller being killed) takes its
    children too.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(list(command), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                   preexec_fn=_die_with_parent)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            log.write(f"\nb2luca: killed after the time limit of {timeout:.0f} s\n".encode())
            returncode = -signal.SIGKILL
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
    return RunResult(returncode, log_path, time.perf_counter() - start, tuple(command))


def child_environment(secret_names: "Sequence[str]" = ()) -> dict[str, str]:
    """The environment for calibration subprocesses: ours minus the configured secret variables
    (GitLab token, RunDB key) and anything whose name looks like a secret, with PYTHONHASHSEED=0."""
    secret_words = ("TOKEN", "SECRET", "PASSWORD", "API_KEY", "APIKEY", "PRIVATE", "CREDENTIAL")
    drop = set(secret_names)
    env = {k: v for k, v in os.environ.items() if k not in drop and not any(w in k.upper() for w in secret_words)}
    # A fixed string hash: a script that iterates a set of names (CalibrationSettings.input_data_names is a
    # frozenset) then reads its inputs in the same order every run, so its payloads are reproducible.
    env["PYTHONHASHSEED"] = "0"
    return env
