"""Dense kernels that release the GIL, and a scheduler that runs the supernodes of an elimination tree on
several threads.

``scipy.linalg.blas`` (f2py) holds the GIL during a BLAS call, so two Python threads calling it run one after
the other. The same routines of the same library, reached through the C function pointers that
``scipy.linalg.cython_blas``/``cython_lapack`` export and called with ``ctypes`` (which releases the GIL),
run in parallel; with the same arguments they give the same bits. The supernodes of a multifrontal
factorisation (bottom-up) or of a selected inversion (top-down) whose dependencies are done are independent,
so :func:`run_tree` hands them to worker threads with single-threaded BLAS: both cores work on the large
fronts near the root without OpenBLAS's own threads (which, on a busy machine, spin and slowed the
factorisation 3-14x), and the result does not depend on the number of threads.
"""

from __future__ import annotations

import ctypes
import heapq
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.linalg.cython_blas as _cblas
import scipy.linalg.cython_lapack as _clapack
from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread", "potrf_lower", "potri_lower", "run_tree", "symm_left_lower", "syrk_lower_update",
           "trsm_right_lower"]

_P = ctypes.c_void_p
_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.restype = ctypes.c_char_p
_get_name.argtypes = [ctypes.py_object]


def _fn(module: Any, name: str, nargs: int) -> Any:
    capsule = module.__pyx_capi__[name]
    ptr = _get_pointer(capsule, _get_name(capsule))
    return ctypes.CFUNCTYPE(None, *([_P] * nargs))(ptr)  # CFUNCTYPE: the call releases the GIL


_dpotrf = _fn(_clapack, "dpotrf", 5)
_dpotri = _fn(_clapack, "dpotri", 5)
_dtrsm = _fn(_cblas, "dtrsm", 11)
_dsyrk = _fn(_cblas, "dsyrk", 10)
_dsymm = _fn(_cblas, "dsymm", 12)

_CH = {c: ctypes.c_char(c.encode()) for c in "LRNTU"}


def _c(ch: str) -> Any:
    return ctypes.byref(_CH[ch])


def _i(v: int) -> Any:
    return ctypes.byref(ctypes.c_int(int(v)))


def _d(v: float) -> Any:
    return ctypes.byref(ctypes.c_double(float(v)))


def _a(x: np.ndarray) -> int:
    # a real check, not an assert (python -O strips those): BLAS would read and write a wrong layout silently
    if x.dtype != np.float64 or not x.flags.f_contiguous:
        raise ValueError(f"BLAS kernel argument must be F-ordered float64, got {x.dtype} "
                         f"({'F' if x.flags.f_contiguous else 'not F'}-contiguous)")
    return x.ctypes.data


def potrf_lower(A: np.ndarray) -> tuple[np.ndarray, int]:
    """Cholesky factor L (lower, upper triangle zeroed; a new F-ordered array) of the k x k ``A``, LAPACK info."""
    L = np.array(A, order="F", dtype=np.float64)
    k = L.shape[0]
    info = ctypes.c_int(0)
    if k:
        _dpotrf(_c("L"), _i(k), _a(L), _i(k), ctypes.byref(info))
        for j in range(1, k):  # the upper triangle, column by column (contiguous in F order; an index
            L[:j, j] = 0.0  # array of the k²/2 positions cost as much as the factorisation)
    return L, int(info.value)


def potri_lower(L: np.ndarray) -> tuple[np.ndarray, int]:
    """(L Lᵀ)⁻¹ in the lower triangle of a new F-ordered array (upper triangle: L's), LAPACK info."""
    Z = np.array(L, order="F", dtype=np.float64)
    k = Z.shape[0]
    info = ctypes.c_int(0)
    if k:
        _dpotri(_c("L"), _i(k), _a(Z), _i(k), ctypes.byref(info))
    return Z, int(info.value)


def trsm_right_lower(L: np.ndarray, B: np.ndarray, trans: bool) -> None:
    """B ← B L⁻ᵀ (``trans``) or B L⁻¹, in place (B: r x k F-ordered, L: k x k lower)."""
    r, k = B.shape
    if r and k:
        _dtrsm(_c("R"), _c("L"), _c("T" if trans else "N"), _c("N"), _i(r), _i(k), _d(1.0), _a(L), _i(k),
               _a(B), _i(r))


def syrk_lower_update(C: np.ndarray, A: np.ndarray, alpha: float, beta: float) -> None:
    """C ← α A Aᵀ + β C on the lower triangle, in place (C: r x r, A: r x k, both F-ordered)."""
    r, k = A.shape
    if r:
        _dsyrk(_c("L"), _c("N"), _i(r), _i(k), _d(alpha), _a(A), _i(r), _d(beta), _a(C), _i(r))


def symm_left_lower(S: np.ndarray, B: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out ← S B with S symmetric (r x r, lower triangle read), B and out r x k, all F-ordered."""
    r, k = B.shape
    if r and k:
        _dsymm(_c("L"), _c("L"), _i(r), _i(k), _d(1.0), _a(S), _i(r), _a(B), _i(r), _d(0.0), _a(out), _i(r))
    return out


_controller: list[ThreadpoolController] = []


def one_blas_thread() -> Any:
    """Context: BLAS runs single-threaded in every thread (the kernels' round-off then does not depend on the
    caller's BLAS setting, and worker threads do not oversubscribe the cores). The library scan is done
    once per process."""
    if not _controller:
        _controller.append(ThreadpoolController())
    return _controller[0].limit(limits=1, user_api="blas")


def run_tree(n: int, waits_for: Sequence[int], unlocks: Sequence[Sequence[int]], key: Callable[[int], int],
             work: Callable[[int, dict], None], threads: int,
             done: Callable[[int], None] | None = None) -> None:
    """Run ``work(s, ctx)`` once for every node s = 0..n-1 after the ``waits_for[s]`` nodes that list s in
    their ``unlocks`` are done; ready nodes go in ascending ``key`` order to ``threads`` workers (each with
    its own ``ctx`` dict for its work buffers). ``done(s)`` runs under the scheduler's lock after node s.
    The first exception of any node stops the others and is raised here.
    """
    left = list(waits_for)
    ready = [(key(s), s) for s in range(n) if left[s] == 0]
    heapq.heapify(ready)
    cond = threading.Condition()
    state = {"finished": 0}
    failures: list[BaseException] = []

    def worker() -> None:
        ctx: dict = {}
        while True:
            with cond:
                while not ready and state["finished"] < n and not failures:
                    cond.wait()
                if failures or not ready:
                    return
                s = heapq.heappop(ready)[1]
            try:
                work(s, ctx)
            except BaseException as exc:  # re-raised by the caller's thread
                with cond:
                    failures.append(exc)
                    cond.notify_all()
                return
            with cond:
                state["finished"] += 1
                for t in unlocks[s]:
                    left[t] -= 1
                    if left[t] == 0:
                        heapq.heappush(ready, (key(t), t))
                if done is not None:
                    done(s)
                cond.notify_all()

    if threads <= 1:
        worker()
    else:
        pool = [threading.Thread(target=worker, name=f"b2luca-tree-{i}", daemon=True) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    if failures:
        raise failures[0]
    if state["finished"] < n:  # pragma: no cover - a cycle in the dependencies (not a tree)
        raise RuntimeError(f"run_tree: {n - state['finished']} nodes never became ready")
