"""Benchmark of the local report transport: cost of one emitted event (outbox append + Markdown issue update).

    python benchmarks/report_bench.py [--calibrations 24] [--repeat 3]

Emits a bucket's worth of events (per calibration: started, the five steps running/done, a validation with
figures, payloads, succeeded) through ``open_reporter(ReportConfig(transport="local"), ...)`` -- the code path the
DAG uses -- and prints the wall time per event.  Target (issue 6): < 50 ms per event, so reporting never shows
in a bucket's wall time.  (Was a timed test in tests/report; timings belong here, not in the suite.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from b2luca.config import ReportConfig  # noqa: E402
from b2luca.report import open_reporter  # noqa: E402
from b2luca.report.outbox import Outbox  # noqa: E402

STEPS = ("caf_config", "input_data", "calibrate", "validate", "import_payloads")


def emit_bucket(work_dir: Path, n_calibrations: int) -> int:
    """Emit a whole bucket's events into ``work_dir``; returns the number of events in the outbox."""
    rep = open_reporter(ReportConfig(transport="local"), work_dir, "bench")
    names = [f"Calibration{i:02d}" for i in range(n_calibrations)]
    plan = [{"name": n, "kind": "calibration", "stage": "raw", "group": "raw-0", "depends_on": [],
             "produced_payloads": [f"{n}Payload"], "expert_username": "expert", "subsystem": "sub"}
            for n in names]
    rep.emit("bucket_started", requested_iov=[0, 1, -1, -1], settings_commit="0" * 40, work_dir=str(work_dir),
             plan=plan)
    for name in names:
        rep.emit("task_started", name, stage="raw", group="raw-0")
        for step in STEPS:
            rep.emit("step", name, step=step, state="running")
            rep.emit("step", name, step=step, state="done")
        rep.emit("validation", name, passed=True, figures={"pull_mean": 0.01, "pull_width": 1.02}, plots=[],
                 message="pulls compatible with N(0,1)")
        rep.emit("payloads", name, global_tag="bench_prompt",
                 payloads=[{"name": f"{name}Payload", "revision": 1, "iov": "0,1,-1,-1"}])
        rep.emit("task_succeeded", name, duration=1.0)
    rep.emit("bucket_finished", success=True, counts={"success": n_calibrations, "failed": 0})
    return len(Outbox(work_dir / "report").read_events())


def main() -> None:
    """Run the benchmark and print ms per event for each repetition."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibrations", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="b2luca-report-bench-") as tmp:
            t0 = time.perf_counter()
            n = emit_bucket(Path(tmp), args.calibrations)
            dt = time.perf_counter() - t0
        print(f"run {i + 1}: {n} events in {dt:.3f} s = {1e3 * dt / n:.2f} ms/event (target < 50 ms)")


if __name__ == "__main__":
    main()
