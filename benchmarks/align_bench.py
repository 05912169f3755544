#!/usr/bin/env python
"""Benchmark of the alignment solver: time and peak memory per phase, exactness, optional pede and CHOLMOD.

Problems:

* ``A3k``, ``B20k``, ``C60k``: the reference problems of ``shared/alignment/tools/gen_barrel.py`` (recipes in
  its README; generated here with exactly those arguments, ``--gen`` finds the script);
* ``3k``, ``20k``, ``60k``: barrel toys of :mod:`b2luca.alignment.toy` (several files of 100k tracks).

Every fit runs in a fresh subprocess (read + assemble + solve + errors) and reports the wall time per phase,
the process's CPU time, and the peak resident memory *per phase* (the kernel's high-water mark, reset
between phases: numpy's buffers included, see :mod:`b2luca.alignment.rss`). Against the truth: RMS of
(fit − truth projected onto the constraint surface) in u and the pull RMS. ``--save DIR`` keeps each
solution; ``--ref DIR`` compares with solutions saved earlier (e.g. by the previous release) in units of σ.

``--pede PATH``: also runs Millepede II's pede on the same files and gen_barrel's steering files
(``steer_sparseMINRES.txt``, its default, and up to 20k parameters ``steer_unpackedLAPACK.txt``, exact), with
its wall time, CPU time and peak memory, prints our/pede ratios (in-process and whole command) and the
largest difference of the values in units of our σ, next to the part of it that pede's 5-digit
millepede.res alone explains; a pede run that writes no millepede.res (it stops with status 0, e.g. "Too
many rejects") is reported as failed. At the end a Markdown table, ours against both. Build pede with
``-DLAPACK64`` against an LP64 OpenBLAS (pede passes 64-bit integers by reference, which LP64 reads
correctly on little-endian machines; linked against Debian's ILP64 libopenblas64 its constrained
unpackedLAPACK solution violated the rotation constraints and every record was then rejected).

``--cholmod``: factorises the assembled matrix of each problem with our supernodal Cholesky and with
CHOLMOD (``pip install .[bench]``: the cvxopt wheel, AMD ordering) and compares time and solutions.

    python benchmarks/align_bench.py --sizes A3k,B20k,C60k --methods sparse --keep /tmp/ab
    python benchmarks/align_bench.py --sizes C60k --keep /tmp/ab --pede /tmp/pede/pede --cholmod
    python benchmarks/align_bench.py --sizes 3k,20k --methods sparse,dense,minres   # the toys

The dense method is skipped above 16,000 parameters (see b2luca.alignment.solve.DENSE_MAX).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOY_SIZES = {"3k": (3000, 200_000), "20k": (20000, 800_000), "60k": (60000, 2_000_000)}
_LAYERS = "40:70,70:100,110:140,160:190,220:250,290:320,380:410,480:510,600:630,750:780"
#: the reference problems (shared/alignment/tools/README.md)
RECIPES = {
    "A3k": ["--sensors", "500", "--tracks", "200000", "--seed", "11"],
    "B20k": ["--layers", _LAYERS, "--sensors", "3334", "--tracks", "500000", "--seed", "22"],
    "C60k": ["--layers", _LAYERS, "--sensors", "10000", "--tracks", "1000000", "--seed", "33"],
}
CHUNK_TRACKS = 100_000
PEDE_EXACT_MAX = 20_100  # pede's exact (dense) method above this needs > 3 GB: skipped


def find_gen(given: Path | None) -> Path | None:
    """gen_barrel.py: ``given``, else shared/alignment/tools beside the repository (or one level up)."""
    cands = [given] if given else [REPO.parent / "shared", REPO.parent.parent / "shared"]
    for c in cands:
        if c is None:
            continue
        p = c if c.name == "gen_barrel.py" else c / "alignment" / "tools" / "gen_barrel.py"
        if p.is_file():
            return p
    return None


def generate_recipe(gen: Path, folder: Path, name: str) -> Path:
    """Write reference problem ``name`` into ``folder`` with gen_barrel.py; returns its steering file."""
    subprocess.run([sys.executable, gen.name, "--out", str(folder), *RECIPES[name]], cwd=gen.parent, check=True,
                   stdout=subprocess.DEVNULL)
    return folder / "steer_inversion.txt"


def generate_toy(folder: Path, n_params: int, n_tracks: int, seed: int = 1) -> Path:
    """A barrel toy (b2luca.alignment.toy) in files of 100k tracks, with its 5 weak-mode constraints."""
    from b2luca.alignment import write_mille
    from b2luca.alignment.toy import barrel_geometry, generate_tracks

    geo = barrel_geometry(n_params, n_layers=6)
    rng = np.random.default_rng(seed)
    scale = np.tile([0.1, 0.1, 0.1, 5e-4, 5e-4, 5e-4], geo.n_sensors)
    truth = scale * rng.normal(size=scale.size)
    files = []
    done = 0
    k = 0
    while done < n_tracks:
        nt = min(CHUNK_TRACKS, n_tracks - done)
        recs = generate_tracks(geo, nt, truth, rng)
        f = folder / f"data_{k:03d}.bin"
        write_mille(f, recs)
        files.append(f.name)
        done += nt
        k += 1
    # the 5 exact weak modes of the toy: du ∝ 1, R, R²; dv ∝ 1, R
    R = geo.radius
    lines = []
    for p, fac in ((1, np.ones_like(R)), (1, R / R.mean()), (1, (R / R.mean()) ** 2), (2, np.ones_like(R)),
                   (2, R / R.mean())):
        lines.append("Constraint 0.0")
        lab = 10 * (np.arange(geo.n_sensors) + 1) + p
        lines += [f"{label} {f:.12e}" for label, f in zip(lab, fac / np.linalg.norm(fac))]
    (folder / "constraints.txt").write_text("\n".join(lines) + "\n")
    np.save(folder / "truth.npy", truth)
    steer = folder / "steer.txt"
    steer.write_text("Cfiles\n" + "\n".join(files) + "\nconstraints.txt\nmethod inversion 1 0.1\nentries 10\nend\n")
    return steer


def _truth_check(steer: Path, labels: np.ndarray, x: np.ndarray, err: np.ndarray | None,
                 fixed: np.ndarray) -> dict:
    """RMS(fit − truth') in u (µm) and the pull RMS, truth' = the truth on the constraint surface."""
    folder = steer.parent
    out: dict = {}
    if (folder / "truth.npz").exists():  # gen_barrel: truth' = truth − N (C N)⁻¹ C truth, C = Nᵀ per column
        t = np.load(folder / "truth.npz")
        N = t["N"]
        Cn = (N / np.linalg.norm(N, axis=0)).T
        tp = t["truth"] - N @ np.linalg.solve(Cn @ N, Cn @ t["truth"])
        pos = np.searchsorted(t["labels"], labels)
        tp = tp[np.minimum(pos, tp.size - 1)]
    elif (folder / "truth.npy").exists():  # the toy: its constraint rows span its weak modes
        from b2luca.alignment import AlignmentProblem
        from b2luca.alignment.problem import _build_constraints

        truth = np.load(folder / "truth.npy")
        problem = AlignmentProblem.from_steering(steer)
        cons, _, _, _ = _build_constraints(problem, labels, np.ones(labels.size, bool), np.zeros(labels.size))
        Q, _ = np.linalg.qr(cons.A.T)
        tp = truth - Q @ (Q.T @ truth)
    else:
        return out
    ok = ~fixed
    du = ok & (labels % 10 == 1)
    out["rms_du_um"] = float(np.sqrt(np.mean((x[du] - tp[du]) ** 2)) * 1000.0)
    if err is not None:
        out["pull_rms"] = float(np.sqrt(np.mean(((x[ok] - tp[ok]) / err[ok]) ** 2)))
    return out


def run_one(steer: Path, method: str, save: Path | None, ref: Path | None) -> dict:
    """Fit in this process; returns timings, CPU time, peak memory per phase and the checks."""
    from b2luca.alignment import AlignmentProblem, solve
    from b2luca.alignment.rss import PhasePeaks

    # CPU time (all threads of the process) per phase, read where the phases end: on a shared machine the
    # wall time per phase says more about the other users than about the code
    marks: list[tuple[str, float]] = [("start", time.process_time())]
    phase_end = PhasePeaks.end

    def end(self: PhasePeaks, phase: str) -> None:
        marks.append((phase, time.process_time()))
        phase_end(self, phase)

    PhasePeaks.end = end  # type: ignore[method-assign]
    t0 = time.perf_counter()
    problem = AlignmentProblem.from_steering(steer)
    problem.phase_memory = True
    res = solve(problem, method=method)
    wall = time.perf_counter() - t0
    PhasePeaks.end = phase_end  # type: ignore[method-assign]
    phase_cpu: dict[str, float] = {}
    for (_, a), (name, b) in zip(marks[:-1], marks[1:]):
        phase_cpu[name] = phase_cpu.get(name, 0.0) + b - a
    ru = resource.getrusage(resource.RUSAGE_SELF)
    peaks = {k: v / 1024**3 for k, v in res.info.get("peak_rss_bytes", {}).items()}
    out: dict[str, Any] = {"method": method, "exact": res.exact, "n_params": int(res.labels.size), "records": res.n_records,
           "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "timings": res.timings,
           "chi2_ndf": res.chi2_ndf, "fixed": int(res.fixed.sum()),
           "phase_peak_gb": peaks, "phase_cpu_s": phase_cpu,
           "bytes": sum(p.stat().st_size for p in _data_files(steer)), "threads": res.info.get("threads"),
           "nnz_L": res.info.get("nnz_L")}
    # the phase marks reset the kernel's high-water mark (ru_maxrss too): the process peak is their maximum
    out["peak_rss_gb"] = max([ru.ru_maxrss / 1024**2, *peaks.values()])
    out.update(_truth_check(steer, res.labels, res.corrections, res.errors, res.fixed))
    tag = f"{steer.parent.name}_{method}"
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        np.savez(save / f"{tag}.npz", labels=res.labels, x=res.corrections,
                 e=res.errors if res.errors is not None else np.zeros(0))
    if ref is not None and (ref / f"{tag}.npz").exists():
        r = np.load(ref / f"{tag}.npz")
        if np.array_equal(r["labels"], res.labels):
            sig = r["e"] if r["e"].size else (res.errors if res.errors is not None else None)
            if sig is not None:
                ok = sig > 0
                out["max_dev_vs_ref_sigma"] = float(np.max(np.abs(res.corrections[ok] - r["x"][ok]) / sig[ok]))
            if res.errors is not None and r["e"].size:
                ok = r["e"] > 0
                out["max_err_dev_rel"] = float(np.max(np.abs(res.errors[ok] / r["e"][ok] - 1.0)))
        else:
            out["max_dev_vs_ref_sigma"] = float("nan")
    return out


def _data_files(steer: Path) -> list[Path]:
    from b2luca.alignment import read_steering

    st = read_steering(steer)
    return [Path(p) for p in list(st.cfiles) + list(st.ffiles)]


def run_pede(pede: Path, folder: Path, key: str, timeout: float) -> dict:
    """pede on ``steer_<key>.txt`` in a scratch copy of the steering (the data files are linked): wall time,
    CPU time and peak memory of the pede process, and its millepede.res."""
    from b2luca.alignment import read_millepede_res

    work = Path(tempfile.mkdtemp(prefix=f"pede_{key}_", dir=folder))
    for f in folder.iterdir():
        if f.is_file() and (f.suffix in (".bin", ".txt")):
            (work / f.name).symlink_to(f.resolve())
    probe = ("import json, resource, subprocess, sys, time; t0 = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); w = time.perf_counter() - t0; "
             "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
             "print(json.dumps({'rc': p.returncode, 'wall_s': w, 'cpu_s': r.ru_utime + r.ru_stime, "
             "'peak_rss_gb': r.ru_maxrss / 1024**2, 'tail': p.stdout[-400:] + p.stderr[-400:]}))")
    try:
        p = subprocess.run([sys.executable, "-c", probe, str(pede), f"steer_{key}.txt"], cwd=work,
                           capture_output=True, text=True, timeout=timeout)
        out = json.loads(p.stdout.strip().splitlines()[-1])
        # pede may stop with exit status 0 and no result (e.g. "Too many rejects (>33.3%) - stop"): a run
        # without millepede.res is a failure, reported with the end of its output
        if out["rc"] == 0 and not (work / "millepede.res").exists():
            out["rc"] = -2
            out["tail"] = "no millepede.res written; " + out["tail"]
        if out["rc"] == 0:
            res = read_millepede_res(work / "millepede.res")
            out["labels"], out["values"] = res["label"], res["value"]
        return out
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return {"rc": -1, "tail": str(exc)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cholmod_compare(steer: Path) -> dict:
    """Our supernodal Cholesky against CHOLMOD (cvxopt, AMD ordering) on the assembled, regularised matrix
    G of the exact solve (C plus the pivot diagonal, see b2luca.alignment.solve)."""
    import scipy.sparse as sp

    from b2luca.alignment import AlignmentProblem
    from b2luca.alignment.assemble import Assembler
    from b2luca.alignment.problem import _build_constraints, assemble
    from b2luca.alignment.solve import _independent_rows, _pivots

    from threadpoolctl import threadpool_limits

    try:
        import cvxopt  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return {"skipped": "cvxopt not installed (pip install .[bench])"}
    problem = AlignmentProblem.from_steering(steer)
    gs = assemble(problem, Assembler, {})
    free = gs.entries >= problem.entries
    fi = np.flatnonzero(free)
    C = gs.C[fi][:, fi].tocsr()
    b = gs.b[fi]
    cons, _, _, _ = _build_constraints(problem, gs.labels, free, np.zeros(gs.labels.size))
    A, _, _ = _independent_rows(cons.A, cons.c)
    P = _pivots(A)
    d = C.diagonal()
    gam = np.maximum(np.abs(d[P]), 1e-3 * float(np.mean(np.abs(d[d != 0]))))
    G = (C + sp.csr_matrix((gam, (P, P)), shape=C.shape)).tocsr()
    with threadpool_limits(1):  # both single-threaded BLAS (the fit's setting; threads oversubscribe here)
        return _cholesky_pair(G, b)


def _cholesky_pair(G, b: np.ndarray) -> dict:  # type: ignore[no-untyped-def]
    import scipy.sparse as sp
    from cvxopt import cholmod, matrix, spmatrix  # type: ignore[import-untyped]

    from b2luca.alignment import SupernodalCholesky

    n = G.shape[0]
    out: dict = {"n": n, "nnz_G": int(G.nnz)}
    t0 = time.perf_counter()
    ours = SupernodalCholesky(G, reuse_analysis=False)
    out["ours_factor_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x1 = ours.solve(b)
    out["ours_solve_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours.diag_inverse()
    out["ours_diag_inverse_s"] = time.perf_counter() - t0
    out["ours_nnz_L"] = ours.nnz_L
    low = sp.tril(G).tocoo()
    Gc = spmatrix(low.data.tolist(), low.row.tolist(), low.col.tolist(), (n, n))
    cholmod.options["supernodal"] = 2  # supernodal
    cholmod.options["postorder"] = True
    t0 = time.perf_counter()
    F = cholmod.symbolic(Gc, uplo="L")
    cholmod.numeric(Gc, F)
    out["cholmod_factor_s"] = time.perf_counter() - t0
    X = matrix(b.copy())
    t0 = time.perf_counter()
    cholmod.solve(F, X)
    out["cholmod_solve_s"] = time.perf_counter() - t0
    x2 = np.array(X).ravel()
    out["rel_diff"] = float(np.max(np.abs(x1 - x2)) / max(float(np.max(np.abs(x2))), 1e-300))
    return out


def _print_row(size: str, r: dict) -> None:
    t = r["timings"]
    ph = r.get("phase_peak_gb", {})
    print(f"[{size}] {r['method']:7s} n={r['n_params']} records={r['records']} file={r['bytes'] / 1e6:.0f} MB "
          + " ".join(f"{k}={v:.2f}s" for k, v in t.items())
          + f" cpu={r['cpu_s']:.1f}s threads={r['threads']} chi2/ndf={r['chi2_ndf']:.4f}", flush=True)
    if r.get("phase_cpu_s"):
        print(f"[{size}]         cpu per phase: " + " ".join(f"{k}={v:.2f}s" for k, v in r["phase_cpu_s"].items())
              + " (pass = read + assemble, all threads)", flush=True)
    print(f"[{size}]         peak memory per phase: " + " ".join(f"{k}={v:.2f}GB" for k, v in ph.items())
          + f" | process peak {r['peak_rss_gb']:.2f} GB"
          + (f" | nnz(L)={r['nnz_L'] / 1e6:.1f}M" if r.get("nnz_L") else "")
          + (f" | RMS(fit-truth') du={r['rms_du_um']:.2f} um" if "rms_du_um" in r else "")
          + (f" pull_rms={r['pull_rms']:.3f}" if "pull_rms" in r else "")
          + (f" | vs ref: max |dx|={r['max_dev_vs_ref_sigma']:.2e} sigma" if "max_dev_vs_ref_sigma" in r else "")
          + (f", errors {r['max_err_dev_rel']:.1e} rel" if "max_err_dev_rel" in r else ""), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="A3k,B20k,C60k",
                    help="comma list of A3k,B20k,C60k (gen_barrel recipes) and/or 3k,20k,60k (toys)")
    ap.add_argument("--methods", default="sparse")
    ap.add_argument("--keep", type=Path, default=None, help="folder for the generated files (kept, reused)")
    ap.add_argument("--gen", type=Path, default=None, help="gen_barrel.py or the shared/ folder holding it")
    ap.add_argument("--save", type=Path, default=None, help="save each solution (npz) into this folder")
    ap.add_argument("--ref", type=Path, default=None, help="compare with solutions saved earlier by --save")
    ap.add_argument("--pede", type=Path, default=None, help="pede executable: run it on the same files")
    ap.add_argument("--cholmod", action="store_true", help="compare our Cholesky with CHOLMOD (cvxopt)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per fit, seconds")
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--chol", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(Path(args.run), args.method, args.save, args.ref)))
        return 0
    if args.chol:
        print(json.dumps(cholmod_compare(Path(args.chol))))
        return 0
    base = args.keep or Path(tempfile.mkdtemp(prefix="align_bench_"))
    load = os.getloadavg()
    print(f"note: wall times on a shared machine (load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on "
          f"{os.cpu_count()} cores); compare ratios and CPU time")
    gen = find_gen(args.gen)
    if args.pede is not None and args.save is None:  # our solutions, to compare pede's values with
        args.save = base / "_solutions"
    summary: dict[str, dict] = {}
    for size in args.sizes.split(","):
        folder = base / size
        folder.mkdir(parents=True, exist_ok=True)
        if size in RECIPES:
            steer = folder / "steer_inversion.txt"
            if not steer.exists():
                if gen is None:
                    print(f"[{size}] skipped: gen_barrel.py not found (give --gen)")
                    continue
                t0 = time.perf_counter()
                generate_recipe(gen, folder, size)
                print(f"[{size}] generated in {time.perf_counter() - t0:.1f} s")
        else:
            n_params, n_tracks = TOY_SIZES[size]
            steer = folder / "steer.txt"
            if not steer.exists():
                t0 = time.perf_counter()
                generate_toy(folder, n_params, n_tracks)
                print(f"[{size}] generated in {time.perf_counter() - t0:.1f} s")
        ours: dict = {}
        for method in args.methods.split(","):
            if method == "dense" and size not in ("A3k", "3k"):
                print(f"[{size}] dense: skipped (n > 16000)")
                continue
            cmd = [sys.executable, __file__, "--run", str(steer), "--method", method]
            for opt in ("save", "ref"):
                if getattr(args, opt) is not None:
                    cmd += [f"--{opt}", str(getattr(args, opt))]
            try:
                t0 = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                command_wall = time.perf_counter() - t0
            except subprocess.TimeoutExpired:
                print(f"[{size}] {method}: timed out after {args.timeout:.0f} s")
                continue
            if p.returncode:
                print(f"[{size}] {method}: failed\n{p.stderr[-2000:]}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["command_wall_s"] = command_wall  # the whole process: start-up, imports, fit, checks
            _print_row(size, r)
            ours[method] = r
        if args.pede is not None and size in RECIPES:
            summary[size] = {"ours": ours.get("sparse"), **_pede_rows(size, folder, args, ours)}
        if args.cholmod:
            p = subprocess.run([sys.executable, __file__, "--chol", str(steer)], capture_output=True, text=True,
                               timeout=args.timeout)
            if p.returncode:
                print(f"[{size}] CHOLMOD comparison failed\n{p.stderr[-2000:]}")
            else:
                c = json.loads(p.stdout.strip().splitlines()[-1])
                if "skipped" in c:
                    print(f"[{size}] CHOLMOD: skipped, {c['skipped']}")
                else:
                    print(f"[{size}] Cholesky of G (n={c['n']}, nnz={c['nnz_G'] / 1e6:.1f}M): ours analysis+numeric "
                          f"{c['ours_factor_s']:.2f} s (nnz(L)={c['ours_nnz_L'] / 1e6:.1f}M), solve "
                          f"{c['ours_solve_s']:.2f} s, diag(G^-1) {c['ours_diag_inverse_s']:.2f} s | CHOLMOD "
                          f"(cvxopt, AMD) {c['cholmod_factor_s']:.2f} s, solve {c['cholmod_solve_s']:.2f} s | "
                          f"solutions differ by {c['rel_diff']:.1e} (relative)", flush=True)
    if summary:
        _print_summary(summary)
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def _pede_rows(size: str, folder: Path, args: argparse.Namespace, ours: dict) -> dict[str, dict]:
    """pede's default (sparseMINRES) and, where it fits, its exact method; ratios to our sparse fit.

    Returns pede's measurements per method (failed runs included, with ``rc`` != 0)."""
    keys = ["sparseMINRES"] + (["unpackedLAPACK"] if size != "C60k" else [])
    mine = ours.get("sparse")
    out: dict[str, dict] = {}
    for key in keys:
        pr = run_pede(args.pede, folder, key, args.timeout)
        if pr.get("rc") != 0:
            print(f"[{size}] pede {key}: FAILED (rc {pr.get('rc')}): {pr.get('tail', '')[-300:]!r}", flush=True)
            out[key] = {"rc": pr.get("rc")}
            continue
        row = {k: pr[k] for k in ("rc", "wall_s", "cpu_s", "peak_rss_gb")}
        line = (f"[{size}] pede {key}: {pr['wall_s']:.2f} s wall, {pr['cpu_s']:.1f} s cpu, "
                f"peak {pr['peak_rss_gb']:.2f} GB")
        if mine is not None:
            line += (f" | ours/pede: wall {mine['wall_s'] / pr['wall_s']:.2f} (whole command "
                     f"{mine['command_wall_s'] / pr['wall_s']:.2f}), cpu {mine['cpu_s'] / max(pr['cpu_s'], 1e-9):.2f}, "
                     f"memory {mine['peak_rss_gb'] / max(pr['peak_rss_gb'], 1e-9):.2f}")
            dv = _pede_value_diff(args.save / f"{size}_sparse.npz", pr["labels"], pr["values"])
            if dv is not None:
                row["max_dev_sigma"] = dv
                line += f" | values differ by <= {dv:.2e} sigma (ours)"
                rnd = _print_rounding(args.save / f"{size}_sparse.npz")
                if rnd is not None:
                    row["print_rounding_sigma"] = rnd
                    line += f"; pede's 5-digit output alone: <= {rnd:.2e} sigma"
        out[key] = row
        print(line, flush=True)
    return out


def _pede_value_diff(sol: Path, labels: np.ndarray, values: np.ndarray) -> float | None:
    """Largest |pede − ours| / σ(ours) over the labels both have (None without our saved solution)."""
    if not sol.exists():
        return None
    s = np.load(sol)
    if not s["e"].size or not labels.size:
        return None
    o = np.argsort(labels)
    plab, pval = labels[o], values[o]
    pos = np.minimum(np.searchsorted(plab, s["labels"]), plab.size - 1)
    ok = (plab[pos] == s["labels"]) & (s["e"] > 0)
    if not ok.any():
        return None
    return float(np.max(np.abs(pval[pos[ok]] - s["x"][ok]) / s["e"][ok]))


def _print_rounding(sol: Path) -> float | None:
    """The largest |x − x rounded to 5 significant digits| / σ of our solution: the part of a difference to
    pede that its millepede.res format (g14.5) alone explains."""
    if not sol.exists():
        return None
    s = np.load(sol)
    ok = s["e"] > 0 if s["e"].size else np.zeros(0, bool)
    if not ok.any():
        return None
    x = s["x"][ok]
    mag = 10.0 ** (np.floor(np.log10(np.maximum(np.abs(x), 1e-300))) - 4)
    return float(np.max(np.abs(np.round(x / mag) * mag - x) / s["e"][ok]))


def _print_summary(summary: dict[str, dict]) -> None:
    """The side-by-side table (Markdown): ours (exact, with errors) against pede's default and exact."""
    load = os.getloadavg()
    print(f"\n## align_bench: b2luca (exact, with errors) vs pede (load now {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f} on {os.cpu_count()} cores)\n")
    print("| problem | ours wall (command) / cpu / peak | pede sparseMINRES wall / cpu / peak | pede exact wall / cpu "
          "/ peak | ours/MINRES wall (cpu) | ours/exact wall (command) | ours/exact cpu | max dev vs exact |")
    print("|---|---|---|---|---|---|---|---|")

    def cell(r: dict | None) -> str:
        if not r:
            return "–"
        if r.get("rc", 0) != 0:
            return "failed"
        return f"{r['wall_s']:.1f} s / {r['cpu_s']:.1f} s / {r['peak_rss_gb']:.2f} GB"

    for size, row in summary.items():
        o = row.get("ours")
        mr, ex = row.get("sparseMINRES"), row.get("unpackedLAPACK")
        ours_cell = (f"{o['wall_s']:.1f} s ({o['command_wall_s']:.1f} s) / {o['cpu_s']:.1f} s / "
                     f"{o['peak_rss_gb']:.2f} GB") if o else "failed"

        def ratio(p: dict | None, whole: bool = False, cpu: bool = False, o: dict | None = o) -> str:
            if not o or not p or p.get("rc", 0) != 0:
                return "–"
            r = o["wall_s"] / p["wall_s"]
            return (f"{r:.2f}" + (f" ({o['command_wall_s'] / p['wall_s']:.2f})" if whole else "")
                    + (f" ({o['cpu_s'] / p['cpu_s']:.2f})" if cpu else ""))

        def cpu_ratio(p: dict | None, o: dict | None = o) -> str:
            if not o or not p or p.get("rc", 0) != 0:
                return "–"
            return f"{o['cpu_s'] / p['cpu_s']:.2f}"

        dev = f"{ex['max_dev_sigma']:.1e} σ" if ex and "max_dev_sigma" in ex else "–"
        if ex and "print_rounding_sigma" in ex:
            dev += f" (5-digit output: {ex['print_rounding_sigma']:.1e} σ)"
        print(f"| {size} | {ours_cell} | {cell(mr)} | {cell(ex) if size != 'C60k' else 'does not fit (dense n²)'} "
              f"| {ratio(mr, cpu=True)} | {ratio(ex, whole=True)} | {cpu_ratio(ex)} | {dev} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
