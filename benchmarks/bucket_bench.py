"""Benchmark of the bucket DAG: demo-bucket wall time and the fixed cost per task.

    python benchmarks/bucket_bench.py [--workers 2] [--tasks 200] [--skip-demo] [--skip-overhead] [--runs N]
                                      [--overhead-runs 20] [--overhead-calibrations 4] [--keep-conditions DIR]
                                      [--without NAME,...]

1. Fixed cost per task (issue 15: ≤ 50 ms): the cost of tasks that do no work.
   a. luigi alone: a fan and a chain of no-op tasks through the same luigi configuration and scheduler hook
      as ``b2luca run`` (wall time / number of tasks), with 1 and ``--workers`` workers;
   b. a bucket of tasks that do no work: the demo bucket with ``--overhead-runs`` runs of 1 event per data
      tag (one cDST production task per run) and ``--overhead-calibrations`` no-op calibrations per stage
      (store one constant, validation passes), run with 1 and ``--workers`` workers: time per task of each
      kind; with 1 worker (tasks in this process) also the time of each component: report events, database
      chain and constants, reading the inputs, writing outputs/manifests/markers/result.json, the jobs;
   c. one native job that does nothing: a fresh ``python -m`` subprocess against a fork of the job server.
2. Demo bucket: ``configs/demo.yaml`` copied into a temporary directory, simulated, then run from scratch;
   prints simulation time, DAG wall time, the sum of task durations, and a rerun (everything complete).
   ``--runs N`` spreads the demo's events over N runs instead of 8 (events per run scaled by 8/N, so the
   total stays the same): the cost must grow with the data, not with the number of runs (issue 15);
   ``--runs`` therefore compares a bucket of few large runs with one of many small runs: the
   calibrations that read a bounded sample cap it in all (``<collection>.max_processed_events``, spread
   over the runs), so they read the same number of events at 8 and at 200 runs.  The cDST production's
   own time (sum over its tasks, and per run) is printed separately.
   Then a table of the tasks' durations (calibrate/validate steps of each calibration), the critical
   path (the longest chain of dependent task durations: the DAG cannot be faster with any number of
   workers) and the bound from the sum of task durations over the workers (issue 15).  The load average
   before and after is printed: on a busy machine compare the CPU times, not the wall times.
Targets (issues 5, 15): demo bucket DAG ≤ 20 s on 2 cores, fixed cost ≤ 50 ms per task; 200 runs ≤ 1.3× 8 runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import luigi
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from b2luca.catalogue import discover  # noqa: E402
from b2luca.config import load_config  # noqa: E402
from b2luca.dataset import simulate_config  # noqa: E402
from b2luca.tasks import Bucket  # noqa: E402
from b2luca.tasks.context import context_for  # noqa: E402
from b2luca.tasks.driver import RecordingFactory, _walk, configure_luigi, run_bucket  # noqa: E402

OUT_DIR = Path(tempfile.mkdtemp(prefix="b2luca-bench-"))


class NoOp(luigi.Task):
    """A task that only writes its marker file."""

    index = luigi.IntParameter()
    chain = luigi.BoolParameter(default=False)

    def requires(self):
        return NoOp(index=self.index - 1, chain=True) if self.chain and self.index > 0 else []

    def output(self):
        return luigi.LocalTarget(str(OUT_DIR / f"{'chain' if self.chain else 'fan'}-{self.index}"))

    def run(self):
        with self.output().open("w") as handle:
            handle.write("done")


class Fan(luigi.WrapperTask):
    n = luigi.IntParameter()

    def requires(self):
        return [NoOp(index=i) for i in range(self.n)]


def scheduling(n: int, workers: int) -> None:
    """luigi alone: no-op tasks through the same luigi configuration and scheduler hook as ``b2luca run``."""
    configure_luigi(OUT_DIR / "luigi.log")
    for label, root in (("fan", Fan(n=n)), ("chain", NoOp(index=n - 1, chain=True))):
        for path in OUT_DIR.glob(f"{label}-*"):
            path.unlink()
        start = time.perf_counter()
        result = luigi.build([root], workers=workers, local_scheduler=True, detailed_summary=True,
                             worker_scheduler_factory=RecordingFactory())
        wall = time.perf_counter() - start
        assert result.status.name == "SUCCESS", result.summary_text
        print(f"luigi scheduling, {label:5s} of {n} no-op tasks, {workers} worker(s): "
              f"{wall:.2f} s wall = {1000 * wall / n:.1f} ms per task")


# --- the fixed cost of a bucket task that does no work (issue 15) ----------------------------------------
NOOP_CALIBRATION = '''"""A calibration that does no work: reads nothing, stores one constant (bucket_bench overhead)."""
import numpy as np
from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS
{imports}
settings = CalibrationSettings(
    name="{name}", expert_username="bench", subsystem="example", description=__doc__,
    input_data_formats=["{fmt}"], input_data_names=["hadron_calib"],
    input_data_filters={{"hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]]}},
    depends_on={depends}, expert_config={{}}, produced_payloads=["{name}"])


def calibrate(job):
    job.output_db.store("{name}", {{"value": np.zeros(1)}}, job.output_iov)
'''
NOOP_VALIDATION = '''"""Passes (bucket_bench overhead)."""
from b2luca.catalogue import ValidationSettings
from b2luca.contract import Verdict

settings = ValidationSettings(name="{name}", description=__doc__, download_files=[], expert_config={{}})


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    return Verdict(passed=True, figures={{}}, message="no-op")
'''


class Timers:
    """Wall seconds and calls of wrapped functions (tasks run in this process with one luigi worker)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
                self.calls[label] = self.calls.get(label, 0) + 1

        self._undo.append((owner, attribute, original))
        setattr(owner, attribute, timed)

    def restore(self) -> None:
        for owner, attribute, original in reversed(self._undo):
            setattr(owner, attribute, original)


def _noop_bucket(base: Path, runs: int, calibrations: int) -> Path:
    """The demo bucket with ``runs`` runs of 1 event per data tag, one cDST production task per run, and
    ``calibrations`` no-op calibrations per stage (raw and cdst) instead of the real ones."""
    directory = base / "calibrations"
    (directory / "validations").mkdir(parents=True)
    for stage in ("raw", "cdst"):
        for i in range(calibrations):
            name = f"NoOp{stage.capitalize()}{i}"
            imports = f"from calibrations.noopraw{i} import settings as upstream" if stage == "cdst" else ""
            (directory / f"{name.lower()}.py").write_text(NOOP_CALIBRATION.format(
                name=name, fmt=stage, imports=imports, depends="[upstream]" if stage == "cdst" else "[]"))
            (directory / "validations" / f"{name.lower()}.py").write_text(NOOP_VALIDATION.format(name=name))
    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["work_dir"] = str(base / "work")
    doc["rundb"]["snapshot"] = str(base / "rundb.csv")
    doc["data"]["raw_directory"] = str(base / "work" / "data")
    doc["data"]["production_task_mb"] = 0  # one production task per run: the per-task cost
    doc["conditions"]["directory"] = str(base / "work" / "conditions")
    doc["conditions"].pop("reference_global_tag", None)
    doc["archive"]["directory"] = str(base / "archive")
    doc["calibrations"] = {"directory": str(directory), "on_validation_failure": "stop"}
    doc["bucket"]["last_run"] = doc["bucket"]["first_run"] + runs - 1
    doc["simulation"]["events"] = {tag: 1 for tag in doc["simulation"]["events"]}
    config = base / "noop.yaml"
    config.write_text(yaml.safe_dump(doc))
    return config


def job_startup(base: Path, jobs: int) -> None:
    """One native job that does nothing: a fresh ``python -m`` subprocess against a fork of the job server
    (in the no-op bucket ``base`` after its run)."""
    from b2luca.runners import NativeRunner

    try:
        from b2luca.runners import job_server
    except ImportError:  # the benchmark run against a b2luca from before the job server (a "before" figure)
        job_server = None

    ctx = context_for(str(base / "noop.yaml"))
    info = ctx.catalogue["NoOpRaw0"]
    work = base / "startup"
    work.mkdir()
    from b2luca.tasks.calibration import write_caf_config, write_input_data

    caf, data = write_caf_config(ctx, info, work), write_input_data(ctx, info, work)
    server_log = work / "job_server.log"
    for mode in ("subprocess", "job server") if job_server is not None else ("subprocess",):
        with (job_server.serving(log_path=server_log) if job_server and mode == "job server"
              else contextlib.nullcontext()):
            NativeRunner().calibrate(caf, data, work, work / "warm.log")  # the server's imports, the page cache
            ready = getattr(job_server, "READY", None) if mode == "job server" else None
            for _ in range(600):  # the server imports its preloads between jobs: time the jobs once it is done
                if ready is None or (server_log.is_file() and ready in server_log.read_text()):
                    break
                time.sleep(0.1)
            start = time.perf_counter()
            for i in range(jobs):
                result = NativeRunner().calibrate(caf, data, work, work / f"{i}.log")
                assert result.ok, (work / f"{i}.log").read_text()
            seconds = (time.perf_counter() - start) / jobs
        print(f"native job that does nothing ({mode}): {1000 * seconds:.0f} ms per job (mean of {jobs}; "
              "a calibration task runs two: calibrate and validate)")


def overhead(n: int, workers: int, runs: int, calibrations: int) -> None:
    """The fixed cost per task: luigi alone, a native job's start-up, then a whole bucket of tasks that do no
    work (1-event runs, no-op calibrations) with the time of each component of the tasks."""
    for w in sorted({1, workers}):
        scheduling(n, w)
    from b2luca import production
    from b2luca.tasks import calibration as calibration_work, cdst, context

    base = Path(tempfile.mkdtemp(prefix="b2luca-overhead-"))
    config = _noop_bucket(base, runs, calibrations)
    cfg = load_config(config)
    simulate_config(cfg)
    for w in sorted({1, workers}):
        shutil.rmtree(cfg.work_dir / "calibrations", ignore_errors=True)
        for sub in ("cdst_production", "archive", "local", "cdst", "report", "settings"):
            shutil.rmtree(cfg.work_dir / sub, ignore_errors=True)
        shutil.rmtree(cfg.conditions.directory / cfg.conditions.prompt_global_tag, ignore_errors=True)
        timers = Timers()
        if w == 1:  # the tasks run in this process: time their parts
            timers.wrap(production, "load_constants", "conditions: read the constants")
            timers.wrap(context.BucketContext, "chain", "conditions: open the database chain")
            timers.wrap(production, "read_raw", "inputs: read the raw files")
            timers.wrap(production, "_read_trees", "inputs: read the cDST files")
            timers.wrap(production, "_write_trees_atomic", "outputs: write the cDST files")
            timers.wrap(production, "_write_manifests", "outputs: manifests")
            timers.wrap(cdst, "write_json_atomic_many", "outputs: markers")
            timers.wrap(calibration_work, "write_caf_config", "calibration: caf_config.json")
            timers.wrap(calibration_work, "write_input_data", "calibration: input_data.json")
            timers.wrap(calibration_work, "calibrate", "calibration: calibrate job")
            timers.wrap(calibration_work, "validate", "calibration: validate job")
            timers.wrap(calibration_work, "import_payloads", "calibration: import payloads")
            timers.wrap(calibration_work, "write_json_atomic", "outputs: result.json")
            timers.wrap(context.BucketContext, "emit", "report: events")
        cpu0 = _cpu()
        try:
            outcome = run_bucket(cfg, workers=w, echo=lambda _: None)
        finally:
            timers.restore()
        cpu = _cpu() - cpu0  # the driver, luigi's task processes, the job server and its jobs
        assert outcome.exit_code == 0, [(r.name, r.state, r.cause) for r in outcome.rows]
        done = [r for r in outcome.rows if r.state == "success"]
        by_kind: dict[str, list[float]] = {}
        for row in done:
            by_kind.setdefault(row.kind, []).append(row.duration or 0.0)
        busy = sum(r.duration or 0.0 for r in done)
        print(f"bucket of tasks that do no work, {w} worker(s): {len(done)} tasks, DAG {outcome.seconds:.2f} s "
              f"= {1000 * outcome.seconds / len(done):.0f} ms per task; sum of task durations {busy:.2f} s; "
              f"CPU {cpu:.2f} s = {1000 * cpu / len(done):.0f} ms per task (load {os.getloadavg()[0]:.1f})")
        for kind, seconds in sorted(by_kind.items()):
            print(f"  {kind:16s} {len(seconds):3d} tasks, {1000 * sum(seconds) / len(seconds):6.0f} ms per task")
        if w == 1:
            print(f"  outside the tasks (luigi scheduling, completeness checks, driver): "
                  f"{1000 * (outcome.seconds - busy) / len(done):.0f} ms per task")
            for label in sorted(timers.seconds):
                print(f"  {label:40s} {1000 * timers.seconds[label]:8.1f} ms in {timers.calls[label]:3d} calls "
                      f"= {1000 * timers.seconds[label] / timers.calls[label]:6.1f} ms per call")
    job_startup(base, 5)
    shutil.rmtree(base, ignore_errors=True)


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children (luigi's forked workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def demo(workers: int, runs: int | None = None, keep_conditions: Path | None = None,
         without: tuple[str, ...] = ()) -> None:
    base = Path(tempfile.mkdtemp(prefix="b2luca-demo-bench-"))
    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["work_dir"] = str(base / "work")
    doc["rundb"]["snapshot"] = str(base / "rundb" / "demo.csv")
    doc["data"]["raw_directory"] = str(base / "work" / "data")
    doc["conditions"]["directory"] = str(base / "work" / "conditions")
    doc["archive"]["directory"] = str(base / "archive")
    doc["calibrations"]["directory"] = str(REPO / "calibrations")
    if runs is not None:
        n_demo = doc["bucket"]["last_run"] - doc["bucket"]["first_run"] + 1
        doc["bucket"]["last_run"] = doc["bucket"]["first_run"] + runs - 1
        doc["simulation"]["events"] = {tag: max(1, round(n * n_demo / runs))
                                       for tag, n in doc["simulation"]["events"].items()}
    if without:  # e.g. the GAN, whose CPU time varies most on a busy machine: the rest compares more closely
        names = sorted(discover(REPO / "calibrations").calibrations)
        unknown = sorted(set(without) - set(names))
        if unknown:
            raise SystemExit(f"--without: unknown calibration(s) {unknown}; the catalogue has {names}")
        doc["calibrations"]["select"] = [n for n in names if n not in without]
        doc["calibrations"]["expert_config"] = {k: v for k, v in doc["calibrations"].get("expert_config", {}).items()
                                                if k not in without}
    config = base / "demo.yaml"
    config.write_text(yaml.safe_dump(doc))
    cfg = load_config(config)
    start = time.perf_counter()
    cpu0 = _cpu()
    simulate_config(cfg)
    sim_seconds = time.perf_counter() - start
    cpu1 = _cpu()
    load0 = os.getloadavg()[0]
    outcome = run_bucket(cfg, workers=workers, echo=lambda _: None)
    cpu2 = _cpu()
    print(f"load average (1 min) before / after the DAG: {load0:.1f} / {os.getloadavg()[0]:.1f}")
    task_seconds = sum(r.duration or 0.0 for r in outcome.rows if r.state == "success")
    ran = sum(1 for r in outcome.rows if r.state == "success")
    production = [r.duration or 0.0 for r in outcome.rows if r.state == "success" and r.kind == "cdst_production"]
    n_runs = cfg.bucket.last_run - cfg.bucket.first_run + 1
    files = sum(1 for _ in Path(doc["data"]["raw_directory"]).rglob("raw_*.root"))
    print(f"demo bucket, {n_runs} runs, {files} raw files: cDST production {len(production)} task(s), "
          f"{sum(production):.1f} s summed ({sum(production) / n_runs:.3f} s per run)")
    print(f"demo bucket: simulation {sim_seconds:.1f} s; DAG {outcome.seconds:.1f} s with {workers} workers "
          f"({ran} tasks, sum of task durations {task_seconds:.1f} s); total {sim_seconds + outcome.seconds:.1f} s; "
          f"exit code {outcome.exit_code}")
    print(f"demo bucket CPU time (this process and its luigi workers): simulation {cpu1 - cpu0:.1f} s, "
          f"DAG {cpu2 - cpu1:.1f} s (compare these on a busy machine)")
    print_task_table(cfg, outcome.rows)
    path_seconds, path = critical_path(str(config), {r.name: r.duration or 0.0 for r in outcome.rows
                                                     if r.state == "success"})
    print(f"critical path (longest chain of dependent task durations): {path_seconds:.1f} s = "
          + " -> ".join(path))
    print(f"lower bound of the DAG wall time: max(critical path {path_seconds:.1f} s, sum of task durations / "
          f"{workers} workers {task_seconds / workers:.1f} s); measured {outcome.seconds:.1f} s")
    start = time.perf_counter()
    again = run_bucket(cfg, workers=workers, echo=lambda _: None)
    print(f"demo bucket rerun (everything complete): {time.perf_counter() - start:.2f} s, exit code {again.exit_code}")
    if keep_conditions is not None:  # for benchmarks/compare_payloads.py
        shutil.copytree(base / "work" / "conditions", keep_conditions)
    shutil.rmtree(base, ignore_errors=True)


def critical_path(config_path: str, durations: dict[str, float]) -> tuple[float, list[str]]:
    """(seconds, task names) of the longest chain of dependent tasks of the bucket, weighted by
    ``durations`` (task name -> seconds; wrapper tasks and tasks not listed count 0)."""
    finish: dict[str, tuple[float, list[str]]] = {}
    for task in _walk([Bucket(config_path=config_path)]):  # requirements first
        before = max((finish[dep.task_id] for dep in luigi.task.flatten(task.requires())),
                     key=lambda item: item[0], default=(0.0, []))
        own = 0.0 if isinstance(task, luigi.WrapperTask) else durations.get(task.task_name, 0.0)
        finish[task.task_id] = (before[0] + own, before[1] + ([task.task_name] if own > 0 else []))
    return max(finish.values(), key=lambda item: item[0], default=(0.0, []))


def print_task_table(cfg, rows) -> None:
    """Per task: duration, and for a calibration its calibrate and validate steps (from result.json)."""
    print(f"{'task':30s} {'duration':>9s} {'calibrate':>10s} {'validate':>9s}")
    for row in rows:
        if row.state != "success" or not row.duration:
            continue
        steps: dict = {}
        result = cfg.work_dir / "calibrations" / row.name / "result.json"
        if row.kind == "calibration" and result.is_file():
            steps = json.loads(result.read_text()).get("steps", {})
        cells = [f"{steps[k]['duration']:.1f}" if k in steps else "" for k in ("calibrate", "validate")]
        print(f"{row.name:30s} {row.duration:8.1f}s {cells[0]:>10s} {cells[1]:>9s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true", help="skip the fixed-cost (no-op tasks) benchmark")
    parser.add_argument("--overhead-runs", type=int, default=20, help="runs of the no-op bucket (one task each)")
    parser.add_argument("--overhead-calibrations", type=int, default=4,
                        help="no-op calibrations per stage (raw, cdst) of the no-op bucket")
    parser.add_argument("--runs", type=int, default=None, help="spread the demo's events over this many runs")
    parser.add_argument("--without", default="", help="calibrations left out of the demo bucket (comma-separated; "
                        "e.g. PXDBackgroundGAN, whose CPU time varies most on a busy machine)")
    parser.add_argument("--keep-conditions", type=Path, default=None,
                        help="copy the demo's conditions folder here (for benchmarks/compare_payloads.py)")
    args = parser.parse_args()
    if not args.skip_overhead:
        overhead(args.tasks, args.workers, args.overhead_runs, args.overhead_calibrations)
    if not args.skip_demo:
        demo(args.workers, args.runs, args.keep_conditions, tuple(n for n in args.without.split(",") if n))
    shutil.rmtree(OUT_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
