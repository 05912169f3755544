"""A fork server for native calibration and validation jobs of a local run (issue 15: fixed cost per task).

A fresh ``python -m b2luca.runners.native_job`` pays Python's start-up and the imports of numpy, scipy, uproot
and matplotlib for every calibration and every validation (0.4–2 s each).  For a local run, ``b2luca run``
starts one server process per run (:func:`serving`) that imports them once; each job is then a
``fork()`` of that server, which runs :func:`b2luca.runners.native_job.main` exactly as the subprocess would:

* the same environment: the server is started with :func:`~b2luca.runners.base.child_environment` (the
  bucket's secrets and look-alikes removed, ``PYTHONHASHSEED=0``), so no secret ever reaches it or its jobs;
* its own session (process group), working directory, ``sys.argv`` and ``sys.path[0]`` (as ``python -m``
  sets them), stdout and stderr appended to the job's log, stdin from ``/dev/null``;
* the exit code comes back to the caller; a job whose caller dies (the luigi worker was killed) kills its
  own process group, as a subprocess does through ``PR_SET_PDEATHSIG``; a timeout kills the job's group.

**ML jobs.**  When a calibration of the run uses the ML library (:func:`preloads_for`), torch (~2 s to import)
is imported by a second server, forked from the first once its own preloads are done: jobs whose script
imports torch or ``b2luca.ml`` (:func:`address_for`) go to it, every other job to the first server, so a job
that does not need torch never waits for its import (issue 15).

Batch jobs (Slurm, LSF, HTCondor) never use it: the server's address lives in this module of the driver
process and of the luigi workers forked from it, not in the environment, so a batch job (or any process
not forked from the driver) runs ``python -m`` as before.  When no server is running, or it cannot be
reached, :class:`~b2luca.runners.native.NativeRunner` falls back to the subprocess.

Protocol (one Unix-socket connection per job): the caller sends one JSON line ``{"argv", "cwd", "log"}``;
the server answers ``{"pid": N}`` when it has forked, then ``{"returncode": N}`` when the job has ended
(negative: killed by that signal, as :mod:`subprocess` reports it).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gc
import importlib
import importlib.util
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .base import RunResult, _die_with_parent, child_environment

#: What the server imports before it serves: everything a native job's start-up and the calibrations'
#: common imports need (torch only for a run with ML calibrations: :data:`ML_PRELOAD`).
PRELOAD = ("b2luca.runners.native_job", "b2luca.dataset", "b2luca.reco.fit", "b2luca.reco.raw", "b2luca.reco.measurements",
           "b2luca.reco.nominal", "b2luca.rootio", "scipy.special", "scipy.sparse", "scipy.optimize", "scipy.stats",
           "matplotlib.pyplot", "b2luca.reco._kernels")  # the track fit's numba kernels (fit.preload)

#: Imported as well when a calibration of the run uses the ML library (:func:`preloads_for`): torch, and the
#: compiler stack that ``torch.optim``'s first optimiser imports (~1.2 s) — ~2 s of every ML training job.
ML_PRELOAD = ("torch", "torch._dynamo")

#: the server process's program (not ``-m``: this module is imported by its package first)
_ENTRY = ("import socket, sys; from b2luca.runners.job_server import serve; "
          "serve(socket.socket(fileno=int(sys.argv[1])), sys.argv[3:], "
          "None if sys.argv[2] == '-' else socket.socket(fileno=int(sys.argv[2])))")

#: what the server prints (to its log) when its preloads are done
READY = "b2luca job server: preloads done"

_address: str | None = None  # the socket of this run's server (driver and the luigi workers forked from it)
_ml_address: str | None = None  # the socket of its ML server (torch preloaded), None when the run has no ML


def current_address() -> str | None:
    """The socket path of the running job server, or None (batch jobs, tests calling a runner directly)."""
    return _address


def address_for(command: Sequence[str]) -> str | None:
    """The server for a ``python -m b2luca.runners.native_job ...`` command: the ML server when there is one
    and the job's script (a validation script, or the ``caf_script`` of a calibrate job's CAF config) imports
    torch or the ML library, else :func:`current_address`."""
    if _ml_address is None or _address is None:
        return _address
    argv = list(command)[3:]
    script: str | None = None
    with contextlib.suppress(OSError, ValueError, IndexError, KeyError, TypeError):
        if argv[0] == "validate":
            script = argv[1]
        elif argv[0] == "calibrate":
            script = json.loads(Path(argv[1]).read_text(encoding="utf-8"))["caf_script"]
    return _ml_address if script is not None and _uses_ml(str(script)) else _address


def _uses_ml(script: str) -> bool:
    """Whether the script imports torch or ``b2luca.ml`` anywhere (an AST scan; False if unreadable)."""
    try:
        stat = os.stat(script)
    except OSError:
        return False
    return _scan_uses_ml(script, stat.st_mtime_ns, stat.st_size, stat.st_ino)


@functools.lru_cache(maxsize=256)  # one scan per script version, not one per job
def _scan_uses_ml(script: str, mtime_ns: int, size: int, inode: int) -> bool:
    try:
        tree = ast.parse(Path(script).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False  # the catalogue reports unreadable scripts
    for node in ast.walk(tree):
        names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)] \
            if isinstance(node, ast.ImportFrom) else [a.name for a in node.names] if isinstance(node, ast.Import) \
            else []  # ``from b2luca import ml`` too
        if any(n.split(".")[0] == "torch" or n == "b2luca.ml" or n.startswith("b2luca.ml.") for n in names):
            return True
    return False


@contextlib.contextmanager
def serving(secret_names: Sequence[str] = (), log_path: Path | None = None,
            extra_preloads: Sequence[str] = ()) -> Iterator[str]:
    """Run a job server while the block runs (jobs of processes forked inside the block use it);
    ``extra_preloads``: modules that jobs of ML scripts need (:func:`preloads_for`): when given, a second
    server imports them and takes those jobs (:func:`address_for`; see the module docstring).

    The listening sockets are bound here, so jobs can connect at once (they queue while the server imports).
    """
    global _address, _ml_address
    directory = tempfile.mkdtemp(prefix="b2luca-jobs-")
    path = os.path.join(directory, "server.sock")
    ml_path = os.path.join(directory, "ml.sock") if extra_preloads else None
    listeners = []
    for where in (path, ml_path):
        if where is not None:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(where)
            listener.listen(64)
            listeners.append(listener)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    fds = [str(item.fileno()) for item in listeners]
    try:
        process = subprocess.Popen([sys.executable, "-c", _ENTRY, fds[0], fds[1] if ml_path else "-", *extra_preloads],
                                   pass_fds=tuple(item.fileno() for item in listeners), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, env=child_environment(secret_names),
                                   start_new_session=True, preexec_fn=_die_with_parent)
    finally:
        for item in listeners:
            item.close()
        if not isinstance(log, int):
            log.close()
    previous, _address = _address, path
    previous_ml, _ml_address = _ml_address, ml_path
    try:
        yield path
    finally:
        _address, _ml_address = previous, previous_ml
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(OSError):
            for where in (path, ml_path):
                if where is not None:
                    os.unlink(where)
            os.rmdir(directory)


# --- the caller's side --------------------------------------------------------------------------------
def _read_message(conn: socket.socket, buffer: bytearray, deadline: float | None) -> dict | None:
    """The next JSON line from ``conn`` (None at end of stream); raises TimeoutError past ``deadline``."""
    while b"\n" not in buffer:
        conn.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
        try:
            chunk = conn.recv(4096)
        except socket.timeout as exc:
            raise TimeoutError from exc
        if not chunk:
            return None
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


def _kill_group(pid: int) -> None:
    for kill in (os.killpg, os.kill):  # the job may not have made its own group yet
        with contextlib.suppress(OSError):
            kill(pid, signal.SIGKILL)
            return


def run_in_server(address: str, command: Sequence[str], cwd: Path, log_path: Path,
                  timeout: float | None = None) -> RunResult:
    """Run ``command`` (``python -m b2luca.runners.native_job ...``) as a fork of the server at ``address``,
    like :func:`~b2luca.runners.base.run_logged`: log appended to ``log_path``, never raises on failure.

    Raises :class:`ConnectionError` when the server cannot take the job (the caller then runs a subprocess).
    """
    argv = list(command)[3:]  # after "python -m b2luca.runners.native_job"
    start = time.perf_counter()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with conn:
        conn.connect(address)  # OSError (a ConnectionError or FileNotFoundError): no server
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
        conn.sendall(json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log_path)}).encode() + b"\n")
        buffer = bytearray()
        first = _read_message(conn, buffer, time.monotonic() + 600)
        if first is None or "pid" not in first:
            raise ConnectionError(f"job server at {address} did not start the job: {first}")
        pid = int(first["pid"])
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            done = _read_message(conn, buffer, deadline)
            returncode = int(done["returncode"]) if done else -signal.SIGKILL
        except TimeoutError:
            _kill_group(pid)
            done = _read_message(conn, buffer, time.monotonic() + 30)
            with open(log_path, "ab") as log:
                log.write(f"\nb2luca: killed after the time limit of {timeout:.0f} s\n".encode())
            returncode = -signal.SIGKILL
        except BaseException:
            _kill_group(pid)
            raise
    return RunResult(returncode, log_path, time.perf_counter() - start, tuple(command))


# --- the server -----------------------------------------------------------------------------------------
def _run_job(conn: socket.socket, request: dict) -> int:
    """In the forked child: become the job (own session, cwd, log, argv) and run native_job.main."""
    os.setsid()
    for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    os.chdir(request["cwd"])
    native_job = importlib.import_module("b2luca.runners.native_job")
    sys.argv = [str(Path(native_job.__file__ or "native_job")), *request["argv"]]
    sys.path[0] = os.getcwd()  # what `python -m` puts first
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)

    def watch_caller() -> None:  # the caller (a luigi worker) died: take the whole job down, like PDEATHSIG
        with contextlib.suppress(OSError):
            while conn.recv(1):
                pass
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch_caller, daemon=True).start()
    return int(native_job.main(request["argv"]))


def _child(conn: socket.socket, request: dict, close: list[socket.socket], fds: Sequence[int]) -> None:
    """The forked child: never returns."""
    code = 1
    try:
        for item in close:
            item.close()
        for fd in fds:
            os.close(fd)
        code = _run_job(conn, request)
    except BaseException:  # noqa: BLE001 - the job's own traceback goes to its log
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def preloads_for(scripts: Iterable[Path]) -> tuple[str, ...]:
    """:data:`ML_PRELOAD` when one of these calibration scripts imports the ML library (``b2luca.ml``) or torch,
    anywhere in the script, and torch is installed; else nothing (a bucket without ML pays no torch import)."""
    if importlib.util.find_spec("torch") is None:
        return ()
    return ML_PRELOAD if any(_uses_ml(str(path)) for path in scripts) else ()


def _preloads(extra: Sequence[str] = ()) -> Iterator[str]:
    """Import :data:`PRELOAD`, then ``extra``, one module per step; after the last, threadpoolctl finds the BLAS libraries once
    for all jobs and sets them to the jobs' usual 1 thread (:func:`~b2luca.runners.native_job.set_blas_threads`).

    After each step every object so far goes into the permanent generation: a job's garbage collections then
    never touch (and so never copy on write) the server's pages of numpy, scipy and matplotlib objects
    (Python's ``gc.freeze`` advice).  A job finished while a module is imported is reported after it."""
    start = time.perf_counter()
    modules = (*PRELOAD, *extra)
    for name in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
        if name == modules[-1]:  # every library loaded: found once for all jobs, BLAS set to 1 thread
            with contextlib.suppress(Exception):
                native_job = importlib.import_module("b2luca.runners.native_job")
                native_job.set_blas_threads(1)
                native_job.warm_command_parser()  # the jobs' command-line parser, built (and used) once for all
            gc.collect()
            print(f"{READY} in {time.perf_counter() - start:.2f} s", flush=True)
        gc.freeze()
        yield name


class _Stopped(BaseException):
    """Raised by the server's SIGTERM handler into a preload's import: a stopped server does not finish it."""


def _step(preloads: Iterator[str], importing: list[bool]) -> str | None:
    """The next preload (None when there are no more, or the server was stopped while importing it)."""
    try:
        importing.append(True)
        name = next(preloads, None)
        importing.clear()
        return name
    except _Stopped:  # the handler cleared ``importing``: a later SIGTERM does not raise
        return None


def serve(listener: socket.socket, extra_preloads: Sequence[str] = (), ml_listener: socket.socket | None = None) -> None:
    """Accept jobs until SIGTERM (then kill the jobs still running); fork one child per job and report its pid
    and exit code.  The preloads run between jobs: a job that comes before they are done (the first
    calibration of a short bucket) is forked at once and imports what it still lacks itself.

    SIGTERM kills every job's process group at once, from the handler (Python runs it between bytecodes,
    also inside an import), and abandons a preload being imported (torch's import can take seconds).

    With ``ml_listener``, ``extra_preloads`` are not imported here: once :data:`PRELOAD` is done, a fork of
    this server (:func:`_start_ml_server`) imports them and serves the jobs of ``ml_listener``."""
    ml_server: int | None = None
    jobs: dict[int, socket.socket] = {}
    stop: list[bool] = []
    importing: list[bool] = []

    def terminate(*_: object) -> None:
        stop.append(True)
        for pid in list(jobs):
            _kill_group(pid)
        if importing:
            importing.clear()
            raise _Stopped

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, terminate)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # the ML server is forked with it blocked
    steps = _preloads(() if ml_listener is not None else extra_preloads)
    # native_job, which every job needs: the jobs that come meanwhile wait in the listen queue
    preloads: Iterator[str] | None = steps if _step(steps, importing) is not None else None
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while not stop or jobs:
        if stop and listener.fileno() >= 0:  # the run is over (or interrupted): no new jobs, none left running
            selector.unregister(listener)
            listener.close()
            for pid in jobs:
                _kill_group(pid)
        events = selector.select(timeout=0 if preloads is not None else 1.0)
        if not events and preloads is not None and _step(preloads, importing) is None:
            preloads = None
            if ml_listener is not None and not stop:
                ml_server = _start_ml_server(ml_listener, extra_preloads, [listener, *jobs.values()], (wake_r, wake_w))
                ml_listener.close()
                ml_listener = None
        if stop and ml_server is not None:
            with contextlib.suppress(OSError):
                os.kill(ml_server, signal.SIGTERM)
        for key, _ in events:
            if key.fileobj is listener:
                _accept(listener, jobs, (wake_r, wake_w), [ml_listener] if ml_listener is not None else [])
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
        if _reap(jobs, ml_server):
            ml_server = None
    if ml_server is not None:  # it kills its own jobs on SIGTERM; wait for that (bounded)
        for _ in range(100):
            try:
                if os.waitpid(ml_server, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            _kill_group(ml_server)
    os._exit(0)  # no interpreter teardown (matplotlib, scipy: ~0.4 s): the jobs are done and reaped


def _start_ml_server(ml_listener: socket.socket, extra_preloads: Sequence[str], close: list[socket.socket],
                     fds: Sequence[int]) -> int:
    """Fork the ML server: it closes this server's sockets and pipe, gets SIGTERM when this server dies (its
    handler kills its jobs), and serves ``ml_listener`` (importing ``extra_preloads`` between its jobs).  SIGTERM
    is blocked from before the fork until the ML server's handler is installed, so none is lost.  Returns its pid."""
    parent = os.getpid()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pid = os.fork()
    finally:
        if os.getpid() == parent:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if pid == 0:
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            for item in close:
                item.close()
            for fd in fds:
                os.close(fd)
            _die_with_parent(signal.SIGTERM)
            if os.getppid() != parent:  # this server died before PDEATHSIG was set
                os._exit(1)
            serve(ml_listener, extra_preloads)
        except BaseException:  # noqa: BLE001 - to the server's log
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _accept(listener: socket.socket, jobs: dict[int, socket.socket], fds: Sequence[int],
            close: Sequence[socket.socket] = ()) -> None:
    """Take one job request: fork its child (which closes ``close`` as well: the ML server's listener not
    yet handed over, so an ML job never connects into a queue that a crashed ML server left), tell the caller the pid."""
    conn, _ = listener.accept()
    try:
        conn.settimeout(10)
        request = _read_message(conn, bytearray(), time.monotonic() + 10)
        if request is None:
            conn.close()
            return
        conn.settimeout(None)
        pid = os.fork()
        if pid == 0:
            _child(conn, request, [listener, *close, *jobs.values()], fds)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        jobs[pid] = conn
    except (OSError, ValueError, TimeoutError):
        conn.close()


def _reap(jobs: dict[int, socket.socket], ml_server: int | None = None) -> bool:
    """Collect every ended child and send its exit code to its caller; True when ``ml_server`` was collected."""
    ended = False
    while jobs or (ml_server is not None and not ended):
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended = ended or pid == ml_server
        conn = jobs.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            conn.close()
    return ended
