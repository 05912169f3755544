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
   the cDST production's own time (sum over its tasks, and per run) and the slowest other tasks are
   printed separately.
Targets (issue 5): demo bucket < 60 s on 2 cores, overhead < 50 ms per task.
"""

from __future__ import annotations

import argparse
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
from b2luca.tasks.driver import RecordingFactory, configure_luigi, run_bucket  # noqa: E402

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
    outcome = run_bucket(cfg, workers=workers, echo=lambda _: None)
    cpu2 = _cpu()
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
    if runs is not None:  # where a bucket of many small runs spends its time (issue 15)
        for row in sorted((r for r in outcome.rows if r.state == "success" and r.kind != "cdst_production"),
                          key=lambda r: -(r.duration or 0.0))[:8]:
            print(f"  {row.name:40s} {row.duration or 0.0:7.1f} s")
    start = time.perf_counter()
    again = run_bucket(cfg, workers=workers, echo=lambda _: None)
    print(f"demo bucket rerun (everything complete): {time.perf_counter() - start:.2f} s, exit code {again.exit_code}")
    if keep_conditions is not None:  # for benchmarks/compare_payloads.py
        shutil.copytree(base / "work" / "conditions", keep_conditions)
    shutil.rmtree(base, ignore_errors=True)


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
