"""Benchmark of the bucket DAG: demo-bucket wall time and luigi scheduling overhead per task.

    python benchmarks/bucket_bench.py [--workers 2] [--tasks 200] [--skip-demo] [--skip-overhead] [--runs N]
                                      [--keep-conditions DIR]

1. Scheduling overhead: a DAG of no-op tasks (a fan of independent tasks feeding one wrapper, and a
   chain where each task requires the previous one) run through the same luigi configuration and
   scheduler hook as ``b2luca run``; overhead per task = wall time / number of tasks (the tasks do nothing).
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
Targets (issue 5): demo bucket < 60 s on 2 cores, overhead < 50 ms per task.
"""

from __future__ import annotations

import argparse
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

from b2luca.config import load_config  # noqa: E402
from b2luca.dataset import simulate_config  # noqa: E402
from b2luca.tasks import Bucket  # noqa: E402
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


def overhead(n: int, workers: int) -> None:
    configure_luigi(OUT_DIR / "luigi.log")
    for label, root in (("fan", Fan(n=n)), ("chain", NoOp(index=n - 1, chain=True))):
        for path in OUT_DIR.glob(f"{label}-*"):
            path.unlink()
        start = time.perf_counter()
        result = luigi.build([root], workers=workers, local_scheduler=True, detailed_summary=True,
                             worker_scheduler_factory=RecordingFactory())
        wall = time.perf_counter() - start
        assert result.status.name == "SUCCESS", result.summary_text
        print(f"scheduling overhead, {label:5s} of {n} no-op tasks, {workers} worker(s): "
              f"{wall:.2f} s wall = {1000 * wall / n:.1f} ms per task")


def _cpu() -> float:
    """User + system CPU seconds of this process and its finished children (luigi's forked workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def demo(workers: int, runs: int | None = None, keep_conditions: Path | None = None) -> None:
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
    parser.add_argument("--skip-overhead", action="store_true", help="skip the no-op scheduling benchmark")
    parser.add_argument("--runs", type=int, default=None, help="spread the demo's events over this many runs")
    parser.add_argument("--keep-conditions", type=Path, default=None,
                        help="copy the demo's conditions folder here (for benchmarks/compare_payloads.py)")
    args = parser.parse_args()
    if not args.skip_overhead:
        for workers in sorted({1, args.workers}):
            overhead(args.tasks, workers)
    if not args.skip_demo:
        demo(args.workers, args.runs, args.keep_conditions)
    shutil.rmtree(OUT_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
