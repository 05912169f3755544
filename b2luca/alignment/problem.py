"""The alignment driver: data passes, fixing, priors, constraints, iterations (what pede does)."""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from ._tree_blas import one_blas_thread
from .assemble import Assembler, DownWeighting, GlobalSystem
from .mille import MilleRecords, RawChunk, _encode, _frame_chunk, iter_raw_chunks
from .result import AlignmentResult
from .rss import PhasePeaks
from .select import split_records
from .solve import LinearConstraints, SolverError, solve_system
from .steering import PEDE_METHODS, Constraint, FitOptions, ParameterSpec, Steering, read_steering

__all__ = ["AlignmentProblem", "assemble", "solve", "solve_steering", "CHUNK_BYTES"]

CHUNK_BYTES = 4 << 20  # file bytes per chunk: keeps the temporaries of one chunk in the allocator's heap
#: measurement rows per chunk of an in-memory record set (a larger set is cut at record boundaries): as
#: CHUNK_BYTES for files, bounds the temporaries of a chunk (a set of a whole calibration's tracks in one chunk
#: made the local fits' arrays large enough to be served by fresh, zero-filled mmaps: system time)
RECORD_CHUNK_MEAS = 32_768
#: BLAS threads while solving: a fixed number, because OpenBLAS's threaded kernels (potrf, syrk, the
#: eigensolvers of the ordering) split their sums by thread count, so the round-off of the corrections
#: would depend on the machine's cores or OPENBLAS_NUM_THREADS (measured: 4e-13 relative, up to 2e-3 on a
#: near-zero parameter).  AlignmentProblem.blas_threads overrides it (0: BLAS's own default).
SOLVE_BLAS_THREADS = 1


@dataclass
class AlignmentProblem(FitOptions):
    """Everything needed for a fit: Mille input, constraints, parameter settings and pede's options.

    ``records``: in-memory record sets used instead of / in addition to files (handy in tests).
    """

    cfiles: list[Path] = field(default_factory=list)
    ffiles: list[Path] = field(default_factory=list)
    records: list[MilleRecords] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    parameters: dict[int, ParameterSpec] = field(default_factory=dict)
    errors: bool = True
    #: also return the full covariance of the free parameters on the constraint surface (dense: for the
    #: ~1500 parameters of the VXD+CDC alignment; ``info["covariance"]`` / ``info["covariance_labels"]``);
    #: "deferred": ``info["covariance_deferred"]``, a callable that returns (labels, covariance) when called (an
    #: iterating caller computes only the one of its last iteration); either with ``blas_threads``, its time in
    #: ``timings["covariance"]``
    covariance: bool | Literal["deferred"] = False
    threads: int = 0  # assembly threads; 0 = one per available core (pede's 'threads' keyword sets it)
    blas_threads: int = SOLVE_BLAS_THREADS  # BLAS threads in the solve (fixed: reproducible round-off)
    #: measure the peak memory of each phase (info['peak_rss_bytes']); resets the process's high-water mark
    #: (ru_maxrss too), so it is for processes that run just the fit (``b2luca align``, benchmarks)
    phase_memory: bool = False
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_steering(cls, st: Steering | str | os.PathLike) -> "AlignmentProblem":
        if not isinstance(st, Steering):
            st = read_steering(st)
        options = {f.name: getattr(st, f.name) for f in fields(FitOptions)}
        return cls(cfiles=list(st.cfiles), ffiles=list(st.ffiles), constraints=list(st.constraints),
                   parameters=dict(st.parameters), threads=st.threads[0] if st.threads else 0,
                   warnings=list(st.warnings), **options)

    def chunks(self, timer: dict[str, float]) -> Iterator[MilleRecords | RawChunk]:
        """All records, chunk by chunk: in-memory record sets, then the files' chunks framed but not
        decoded (``RawChunk.decode()``); the time spent reading and framing is added to ``timer['read']``."""
        for recs in self.records:
            yield from record_chunks(recs, RECORD_CHUNK_MEAS)
        for files, fortran in ((self.cfiles, False), (self.ffiles, True)):
            for f in files:
                it = iter_raw_chunks(f, fortran=fortran, chunk_bytes=CHUNK_BYTES)
                while True:
                    t0 = time.perf_counter()
                    try:
                        c = next(it)
                    except StopIteration:
                        timer["read"] = timer.get("read", 0.0) + time.perf_counter() - t0
                        break
                    timer["read"] = timer.get("read", 0.0) + time.perf_counter() - t0
                    yield c

    def n_threads(self) -> int:
        """Assembly threads to use (``threads``, or one per core this process may run on)."""
        if self.threads > 0:
            return self.threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)


def record_chunks(recs: MilleRecords, limit: int) -> list[MilleRecords]:
    """``recs`` cut at record boundaries into consecutive sets of at most ``limit`` measurement rows (a record
    with more rows alone); ``recs`` itself when it is that small."""
    if recs.n_meas <= limit:
        return [recs]
    bounds = [0]
    ptr = recs.rec_ptr
    while bounds[-1] < recs.n_records:
        b = int(np.searchsorted(ptr, ptr[bounds[-1]] + limit, side="right")) - 1  # last record end within limit
        bounds.append(max(b, bounds[-1] + 1))
    return split_records(recs, np.array(bounds, np.int64))


def _preload_kernels() -> None:
    """Load the assembly's compiled kernels (numba's on-disk cache, or a compilation on the first run) by
    decoding and assembling one tiny record of a Mille file; a failure is left for the assembly itself to
    report."""
    i8 = np.arange(3, dtype=np.int64)
    recs = MilleRecords(rec_ptr=np.array([0, 2], np.int64), value=np.zeros(2), sigma=np.ones(2),
                        loc_meas=i8[:2].copy(), loc_index=np.zeros(2, np.int32), loc_der=np.ones(2),
                        glb_meas=i8[:2].copy(), glb_label=i8[1:].copy(), glb_der=np.ones(2), meas_sorted=True)
    try:  # through the bytes of a file (read-only words: the decoder's argument types)
        raw = _frame_chunk(_encode(recs, False, False), False, True, "<preload>", 0)
        Assembler().add(raw if raw is not None else recs)
    except Exception:  # noqa: BLE001 - reported by the assembly, which runs the same code
        pass


def assemble(problem: AlignmentProblem, make: Callable[[], Assembler], timer: dict[str, float]) -> GlobalSystem:
    """One pass over the data: the normal equations of all records, in one accumulator.

    Every chunk is decoded and its local fits and block-pair sums computed by one of the worker threads
    (numpy and BLAS release the GIL in the heavy operations, so they run in parallel; this thread reads and
    frames), but labels are registered and the chunk sums are added in chunk order, one chunk at a time
    (:meth:`Assembler.index`, :meth:`Assembler.absorb`): the result is the same to the last bit whatever the
    number of threads and their timing, and memory holds one global matrix plus the compact sums of the
    chunks in flight (at most two per thread), not one matrix per thread.
    """
    asm = make()
    nt = problem.n_threads()
    if problem.cfiles or problem.ffiles:
        # numba's import and the kernels' loading from its cache (~0.5-1 s) beside the first reads and decodes
        threading.Thread(target=_preload_kernels, name="b2luca-kernels", daemon=True).start()
    if nt <= 1:
        for c in problem.chunks(timer):
            asm.add(c)
        return asm.finish()
    feed: queue.Queue = queue.Queue(maxsize=nt)
    turn = {"index": 0, "absorb": 0}
    cond = threading.Condition()
    failures: list[BaseException] = []

    def wait_turn(step: str, i: int) -> bool:
        with cond:
            while turn[step] != i and not failures:
                cond.wait()
            return not failures

    def next_turn(step: str) -> None:
        with cond:
            turn[step] += 1
            cond.notify_all()

    def work() -> None:
        while True:
            item = feed.get()
            if item is None:
                break
            if failures:
                continue  # drain without work after a failure
            i, chunk = item
            try:
                recs = asm.prepare(chunk)
                del chunk
                if not wait_turn("index", i):
                    continue
                lidx = asm.index(recs)
                next_turn("index")
                sums = asm.compute(recs, lidx)
                del recs, lidx
                if not wait_turn("absorb", i):
                    continue
                asm.absorb(sums)
                del sums
                next_turn("absorb")
            except BaseException as exc:  # re-raised in the calling thread
                with cond:
                    failures.append(exc)
                    cond.notify_all()

    workers = [threading.Thread(target=work, name=f"b2luca-assemble-{k}", daemon=True) for k in range(nt)]
    for w in workers:
        w.start()
    try:
        for i, c in enumerate(problem.chunks(timer)):
            if failures:
                break
            feed.put((i, c))
    finally:
        for _ in workers:
            feed.put(None)
        for w in workers:
            w.join()
    if failures:
        raise failures[0]
    return asm.finish()


def _malloc_for_pass(on: bool) -> None:
    """Tune glibc's malloc for the data pass (``on``) or for the solve (no effect off glibc).

    Every data chunk allocates the same-sized temporaries again; by default glibc serves arrays above a
    (dynamic) threshold with fresh mmaps and trims the heap, so the kernel zero-fills those pages on each
    first touch, which on virtual machines costs as much as the arithmetic (measured: decoding a 92 MB
    file took 455 ms with the defaults, 175-250 ms with freed memory kept). During a pass the mmap threshold
    is 256 MB and the trim threshold 1 GB; after it (``on=False``) the kept memory is given back and arrays
    above 4 MB are mmapped again, so the solve's large temporaries (fronts of the factorisation, panels of
    the selected inversion, freed by one worker thread and needed in other sizes by another) return to the
    system when freed instead of staying resident (60k parameters, two threads: 2.05 -> 1.69 GB peak).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if on:
            libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
        else:
            libc.mallopt(-3, 4 << 20)
            libc.mallopt(-1, 64 << 20)
            libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _pass(problem: AlignmentProblem, corr: tuple[np.ndarray, np.ndarray] | None, ipass: int,
          timer: dict[str, float]) -> GlobalSystem:
    dw = DownWeighting()
    if ipass >= 1 and problem.outlierdownweighting > 0:
        dw.iterations = problem.outlierdownweighting
        dw.dwfractioncut = problem.dwfractioncut
    if problem.chiscut is not None and problem.chiscut[0] > 0:
        dw.chi2_factor = problem.chiscut[0] if ipass == 0 else (problem.chiscut[1] if ipass == 1 else 1.0)
    if ipass == 0 and problem.hugecut is not None:
        dw.hugecut = problem.hugecut
    t_read0 = timer.get("read", 0.0)
    t0 = time.perf_counter()
    with one_blas_thread():  # (the wide kernels' BLAS products, on every assembly thread: no oversubscription)
        gs = assemble(problem, lambda: Assembler(corrections=corr, downweight=dw), timer)
    # with threads, reading overlaps the assembly: 'assemble' is the rest of the pass's wall time
    timer["assemble"] = timer.get("assemble", 0.0) + time.perf_counter() - t0 - (timer.get("read", 0.0) - t_read0)
    return gs


def _build_constraints(problem: AlignmentProblem, labels: np.ndarray, free: np.ndarray,
                       total: np.ndarray) -> tuple[LinearConstraints, sp.csr_matrix, np.ndarray, list[str]]:
    """Exact constraints on the free corrections + the quadratic terms of 'Measurement' constraints.

    ``total`` = initial value + correction so far, per label. Returns (constraints over the free
    parameters, soft-constraint matrix and vector over the free parameters, warnings).
    """
    n = labels.size
    fidx = np.full(n, -1, np.int64)
    fidx[free] = np.arange(int(free.sum()))
    nf = int(free.sum())
    rows, cvals, warn = [], [], []
    Ms = sp.csr_matrix((nf, nf))
    bs = np.zeros(nf)
    for con in problem.constraints:
        pos = np.searchsorted(labels, con.labels)
        pc = np.minimum(pos, max(n - 1, 0))
        known = (pos < n) & (labels[pc] == con.labels) if n else np.zeros(con.labels.size, bool)
        if not known.all():
            warn.append(f"{con.origin}: {int((~known).sum())} label(s) not in the data ignored "
                        f"(e.g. {int(con.labels[~known][0])})")
        li = pc[known]
        f = con.factors[known]
        current = float(np.dot(f, total[li]))
        fi = fidx[li]
        isfree = fi >= 0
        resid = con.value - current
        if con.sigma is None:
            row = np.zeros(nf)
            np.add.at(row, fi[isfree], f[isfree])
            rows.append(row)
            cvals.append(resid)
        else:
            ff = np.zeros(nf)
            np.add.at(ff, fi[isfree], f[isfree])
            nz = np.flatnonzero(ff)
            w = 1.0 / con.sigma ** 2
            Ms = Ms + sp.csr_matrix((w * np.outer(ff[nz], ff[nz]).ravel(),
                                     (np.repeat(nz, nz.size), np.tile(nz, nz.size))), shape=(nf, nf))
            bs[nz] += w * ff[nz] * resid
    A = np.array(rows) if rows else np.zeros((0, nf))
    return LinearConstraints(A, np.asarray(cvals, np.float64)), Ms.tocsr(), bs, warn


def _constrained_covariance(C: sp.spmatrix, A: np.ndarray) -> np.ndarray:
    """Covariance of the free parameters on the surface A x = c: the top-left block of the inverse of the
    (dense) KKT matrix [[C, Aᵀ], [A, 0]] (pseudo-inverse when constraints are dependent)."""
    n, m = C.shape[0], A.shape[0]
    K = np.zeros((n + m, n + m))
    K[:n, :n] = C.toarray()
    K[:n, n:], K[n:, :n] = A.T, A
    try:
        inv = np.linalg.inv(K)
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(K, hermitian=True)
    cov = inv[:n, :n]
    return 0.5 * (cov + cov.T)


@dataclass
class _DeferredCovariance:
    """(labels, :func:`_constrained_covariance`) of one solve's system when called, with that solve's BLAS
    threads; its time goes into ``timings["covariance"]`` (the result's timings, set by :func:`solve`)."""

    labels: np.ndarray
    C: sp.spmatrix
    A: np.ndarray
    blas_threads: int
    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        with threadpool_limits(self.blas_threads or None, user_api="blas"):
            cov = _constrained_covariance(self.C, self.A)
        self.timings["covariance"] = self.timings.get("covariance", 0.0) + time.perf_counter() - t0
        return self.labels, cov


def solve(problem: AlignmentProblem, method: str | None = None) -> AlignmentResult:
    """Run the fit: data pass(es), fixing, priors, constraints, exact or MINRES solution."""
    method = PEDE_METHODS.get((method or problem.method).lower(), None) or (method or problem.method)
    if method not in ("auto", "sparse", "dense", "minres"):
        raise SolverError(f"unknown method {method!r}")
    timer: dict[str, float] = {}
    memory = PhasePeaks(enabled=problem.phase_memory)
    t_start = time.perf_counter()
    npass = max(1, problem.iterations)
    if problem.outlierdownweighting > 0:
        npass = max(npass, 2)
    corr_labels = np.zeros(0, np.int64)
    corr_values = np.zeros(0)
    prev_chi2 = None
    warnings = list(problem.warnings)
    out = None
    for ipass in range(npass):
        _malloc_for_pass(True)
        gs = _pass(problem, (corr_labels, corr_values) if ipass else None, ipass, timer)
        _malloc_for_pass(False)  # the pass's freed temporaries, kept for reuse during it, go back now
        memory.end("pass")
        labels = gs.labels
        n = labels.size
        if ipass == 0:
            corr_labels, corr_values = labels.copy(), np.zeros(n)
        cur = np.zeros(n)
        if corr_labels.size:
            pos = np.searchsorted(corr_labels, labels)
            pc = np.minimum(pos, corr_labels.size - 1)
            hit = corr_labels[pc] == labels
            cur[hit] = corr_values[pc[hit]]
        initial = np.array([problem.parameters[int(lab)].initial if int(lab) in problem.parameters else 0.0
                            for lab in labels]) if problem.parameters else np.zeros(n)
        presig = np.array([problem.parameters[int(lab)].presigma if int(lab) in problem.parameters else 0.0
                           for lab in labels]) if problem.parameters else np.zeros(n)
        fixed = presig < 0
        reason = {int(lab): "presigma < 0" for lab in labels[fixed]}
        few = (gs.entries < problem.entries) & ~fixed
        reason.update({int(lab): f"entries {int(e)} < {problem.entries}"
                       for lab, e in zip(labels[few], gs.entries[few])})
        fixed |= few
        free = ~fixed
        fi = np.flatnonzero(free)
        C = gs.C if fi.size == n else gs.C[fi][:, fi].tocsr()  # no copy when every parameter is free
        b = gs.b[fi].copy()
        # χ² pieces of the data alone (before priors/soft constraints)
        Cdata, bdata = C, b.copy()
        prior = presig[fi] > 0
        if prior.any():
            wprior = np.zeros(fi.size)
            wprior[prior] = 1.0 / presig[fi][prior] ** 2
            C = (C + sp.diags(wprior)).tocsr()
            b = b - wprior * cur[fi]  # prior centred on the initial value
        cons, Ms, bs, cwarn = _build_constraints(problem, labels, free, initial + cur)
        if ipass == 0:
            warnings += cwarn
        if Ms.nnz:
            C = (C + Ms).tocsr()
            b = b + bs
        with threadpool_limits(problem.blas_threads or None, user_api="blas"):
            memory.end("prepare")
            so = solve_system(C, b, cons, method=method, errors=problem.errors, phase_end=memory.end)
        for k, v in so.timings.items():
            timer[k] = timer.get(k, 0.0) + v
        cov_info: dict[str, object] = {}
        if problem.covariance == "deferred":
            cov_info = {"covariance_deferred": _DeferredCovariance(labels[fi].copy(), C, cons.A, problem.blas_threads)}
        elif problem.covariance:  # the same computation, now (its time into this fit's timer)
            cov_labels, cov = _DeferredCovariance(labels[fi].copy(), C, cons.A, problem.blas_threads, timer)()
            cov_info = {"covariance": cov, "covariance_labels": cov_labels}
        delta = np.zeros(n)
        delta[fi] = so.x
        chi2 = gs.chi2_0 - 2.0 * float(bdata @ so.x) + float(so.x @ (Cdata @ so.x))
        cur = cur + delta
        corr_labels, corr_values = labels, cur
        err = None
        if so.errors is not None:
            err = np.zeros(n)
            err[fi] = so.errors
        # ndf: Σ (measurements − local parameters) − (free global parameters − constraints)
        ndf = gs.ndf - (fi.size - int(so.info.get("constraints_used", 0)))
        out = AlignmentResult(
            labels=labels, corrections=cur.copy(), errors=err, initial=initial, presigma=presig, fixed=fixed,
            fixed_reason=reason, chi2=chi2, ndf=ndf, method=so.method, exact=so.exact, n_records=gs.n_records,
            n_used=gs.n_used, rejected=gs.rejected, timings={}, iterations=ipass + 1, n_meas=gs.n_meas,
            constraint_residual=float(so.info.get("constraint_residual", 0.0)),
            downweighted_fraction=gs.downweighted_fraction, info={**so.info, "threads": problem.n_threads(), **cov_info},
            warnings=warnings,
        )
        if so.info.get("constraints_dropped"):
            warnings.append(f"linearly dependent or empty constraints dropped: {so.info['constraints_dropped']}")
        stop = prev_chi2 is not None and abs(prev_chi2 - chi2) < problem.dchi2 and ipass + 1 >= 2 and \
            not (problem.outlierdownweighting and ipass < 1)
        prev_chi2 = chi2
        if stop:
            break
    assert out is not None
    timer["total"] = time.perf_counter() - t_start
    memory.end("finish")
    if problem.phase_memory:
        out.info["peak_rss_bytes"] = dict(memory.peaks)
        out.info["peak_rss_per_phase"] = memory.reset_ok
    order = ["read", "assemble", "factorise", "solve", "errors", "covariance", "total"]
    out.timings = {k: timer[k] for k in order if k in timer}
    deferred = out.info.get("covariance_deferred")
    if isinstance(deferred, _DeferredCovariance):
        deferred.timings = out.timings  # (its time, when it is called)
    return out


def solve_steering(path: str | os.PathLike, method: str | None = None) -> AlignmentResult:
    """Read a pede steering file and fit."""
    return solve(AlignmentProblem.from_steering(path), method=method)

