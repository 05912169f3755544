"""Subprocess entry of the native runner: ``python -m b2luca.runners.native_job calibrate|validate ...``.

``calibrate CAF_CONFIG INPUT_DATA``: load the script named by ``caf_script``, build a
:class:`~b2luca.contract.CalibrationJob` from the two JSON files and call ``calibrate(job)``; payloads
land in ``caf_outputdb_results/<name>/`` of the working directory.
``validate SCRIPT JOB_PATH INPUT_DATA VERDICT [--reference DB ...]``: call ``run_validation`` and save
its verdict as JSON.  Exit code 0 on success, 1 when the script raised (traceback in the log).

Both run with as many BLAS threads as the calibration's ``cpus`` (``backend_args`` of ``caf_config.json``,
b2luca's batch resources; default 1), locally and in a batch job alike: several calibrations and validations run
side by side (luigi workers, batch slots), and OpenBLAS threads spinning for a core another process holds made a
636×636 ``eigh`` 60× slower (0.10 s → 6.3 s at load 3 on 2 cores); the same count everywhere also keeps a
payload's round-off the same in a local run and a batch job.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import scipy.linalg  # noqa: F401 - loads scipy's own BLAS now, so that the BLAS limit below covers it too
from threadpoolctl import ThreadpoolController

from ..catalogue.prompt_api import FilterVocabulary, using_vocabulary
from ..conditions import DatabaseChain, LocalDatabase
from ..contract import CALIBRATE, RUN_VALIDATION, CalibrationJob, Verdict, chain_from_caf_config, read_input_data
from ..iov import IoV
from ..payload_deps import READS_FILE, write_reads
from .base import output_database


def load_script(path: Path) -> ModuleType:
    """Import a calibration/validation script from its file path."""
    spec = importlib.util.spec_from_file_location(f"b2luca_script_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    for parent in path.resolve().parents:  # so `from calibrations.x import settings` resolves
        if parent.name == "calibrations":
            if str(parent.parent) not in sys.path:
                sys.path.insert(0, str(parent.parent))
            break
    spec.loader.exec_module(module)
    return module


def blas_threads(caf_config: dict) -> int:
    """The BLAS thread count of a calibration's processes: its ``cpus`` resource (≥ 1; 1 when not given)."""
    try:
        return max(1, int(caf_config.get("backend_args", {}).get("cpus") or 1))
    except (TypeError, ValueError, AttributeError):
        return 1


#: (the shared libraries loaded when it was made, the controller, the BLAS threads it left set): see blas_limit
_controller: tuple[frozenset[str], ThreadpoolController, int | None] | None = None


def _shared_libraries() -> frozenset[str] | None:
    """The shared objects mapped into this process (Linux ``/proc/self/maps``; None elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            return frozenset(line.rsplit(None, 1)[-1] for line in maps if ".so" in line)
    except OSError:
        return None


def blas_limit(threads: int) -> contextlib.AbstractContextManager[Any]:
    """A context that runs with this process's BLAS libraries limited to ``threads`` threads (threadpoolctl).

    threadpoolctl finds the libraries by resolving every shared object of the process (10-15 ms, most of a
    no-op job's time), so the controller is made once and reused while no shared library was loaded since
    (a script that imports torch gets a fresh one).  The job server calls :func:`set_blas_threads` before it
    forks its jobs: a job that wants the threads already set changes nothing.
    """
    global _controller
    loaded = _shared_libraries()
    if _controller is None or loaded is None or _controller[0] != loaded:
        _controller = (loaded or frozenset(), ThreadpoolController(), None)
    if _controller[2] == threads:
        return contextlib.nullcontext()
    return _controller[1].limit(limits=threads, user_api="blas")


def set_blas_threads(threads: int) -> None:
    """Limit this process's BLAS libraries to ``threads`` threads from now on (the job server, before forking)."""
    global _controller
    _controller = None
    with blas_limit(threads):
        pass
    assert _controller is not None
    _controller[1].limit(limits=threads, user_api="blas")  # not undone: the server's setting from now on
    _controller = (_controller[0], _controller[1], threads)


def do_calibrate(caf_config: Path, input_data: Path) -> None:
    """Run one native calibration as b2caf-prompt-run would."""
    config = json.loads(caf_config.read_text())
    extra = config.get("b2luca", {}).get("extra_input_data_filters")
    with using_vocabulary(FilterVocabulary().extended(extra)):
        module = load_script(Path(config["caf_script"]))
    settings = module.settings
    function = getattr(module, CALIBRATE, None)
    if function is None:
        raise AttributeError(f"{config['caf_script']}: defines no {CALIBRATE}(job) function")
    out_dir = output_database(Path.cwd(), settings.name)
    log = logging.getLogger(f"b2luca.calibration.{settings.name}")
    job = CalibrationJob(
        name=settings.name, input_files=read_input_data(input_data),
        requested_iov=IoV.from_list(config["requested_iov"]), expert_config=dict(config.get("expert_config", {})),
        output_db=LocalDatabase(out_dir).create(), database_chain=chain_from_caf_config(config),
        work_dir=Path.cwd(), log=log)
    log.info("calibrating %s on %s", settings.name,
             ", ".join(f"{k}: {len(v)} files" for k, v in job.input_files.items()))
    try:
        with blas_limit(blas_threads(config)):
            function(job)
    finally:  # what it read, also when it failed (the task checks it against depends_on)
        try:
            # not fsynced: the task checks it right after this job and deletes it before every attempt
            write_reads(Path.cwd() / READS_FILE, job.database_chain.lookups(), durable=False)
        except OSError as exc:  # a full disk must not hide the calibration's own error
            log.warning("could not record the payloads read (%s)", exc)
    stored = [e.name for e in job.output_db.entries()]
    missing = sorted(set(settings.produced_payloads) - set(stored))
    if missing:
        raise RuntimeError(f"{settings.name} did not store its payload(s) {', '.join(missing)}")
    log.info("stored %s", ", ".join(f"{e.name} rev {e.revision}" for e in job.output_db.entries()))


def do_validate(script: Path, job_path: Path, input_data: Path, verdict_path: Path, reference: list[str]) -> None:
    """Run one validation and save its verdict."""
    module = load_script(script)
    function = getattr(module, RUN_VALIDATION, None)
    if function is None:
        raise AttributeError(f"{script}: defines no {RUN_VALIDATION}(...) function")
    config = json.loads((job_path / "caf_config.json").read_text())
    reference_db = DatabaseChain([LocalDatabase(p) for p in reference]) if reference else None
    with blas_limit(blas_threads(config)):
        verdict = function(str(job_path), str(input_data), config["requested_iov"],
                           dict(config.get("expert_config", {})), reference_db=reference_db)
    if not isinstance(verdict, Verdict):
        raise TypeError(f"{script}: run_validation returned {type(verdict).__name__}, expected a Verdict")
    verdict.save(verdict_path)


@functools.lru_cache(maxsize=1)
def command_parser() -> argparse.ArgumentParser:
    """The command line's parser, built once per process: the job server builds it before it forks its jobs
    (three parsers cost ~2-3 ms of every no-op job); parsing does not change it."""
    parser = argparse.ArgumentParser(prog="b2luca.runners.native_job")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("calibrate")
    p.add_argument("caf_config", type=Path)
    p.add_argument("input_data", type=Path)
    p = sub.add_parser("validate")
    for name in ("script", "job_path", "input_data", "verdict"):
        p.add_argument(name, type=Path)
    p.add_argument("--reference", action="append", default=[])
    return parser


def warm_command_parser() -> None:
    """Build the command-line parser and parse one command line of each kind with it (the job server, before it
    forks its jobs): argparse matches arguments with regular expressions that :mod:`re` compiles on first use
    and caches, ~2 ms of every no-op job when each job compiles them again."""
    parser = command_parser()
    parser.parse_args(["calibrate", "caf_config.json", "input_data.json"])
    parser.parse_args(["validate", "script.py", "job", "input_data.json", "verdict.json", "--reference", "db"])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry of the subprocess."""
    args = command_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        if args.what == "calibrate":
            do_calibrate(args.caf_config, args.input_data)
        else:
            do_validate(args.script, args.job_path, args.input_data, args.verdict, args.reference)
    except Exception:
        traceback.print_exc(file=sys.stdout)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
