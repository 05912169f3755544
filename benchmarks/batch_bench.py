"""Benchmark: the demo bucket run locally and on Slurm; wall time and batch overhead per DAG level.

    .ci/slurm start                      # a single-node Slurm on this machine (root)
    python benchmarks/batch_bench.py [--small] [--workers-local 2] [--workers-slurm 6] [--ttl 1]

The demo config is copied into a temporary directory and simulated once; the local and the Slurm run
each start from a fresh copy of the conditions directory.  The job levels are the plan's groups that
run as jobs (raw-0, raw-1, ..., cdst_production, cdst-0, ...).  A level ends when its last task's
output is written (``start + duration`` in result.json / the production markers, times taken inside
the task); the level's wall time is the gap from the previous level's end, and the overhead of a level
is that wall time on Slurm minus the same locally (submission, queueing, b2luigi's status polling,
job start-up).  Also printed: per job, the delay from ``sbatch`` to the task's first line of work.
Target (issue 13): < 5 s overhead per level on an idle Slurm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from b2luca.config import load_config  # noqa: E402
from b2luca.dataset import simulate_config  # noqa: E402
from b2luca.tasks.context import context_for, group_name  # noqa: E402
from b2luca.tasks.driver import run_bucket  # noqa: E402
from b2luca.tasks.ledger import ledger_path, read_ledger  # noqa: E402

SMALL_EVENTS = {"cosmic_calib": 150, "mumu_tight_or_highm_calib": 600, "hadron_calib": 300,
                "bhabha_all_calib": 300, "random_calib": 50, "radmumu_calib": 1000}  # radmumu: ECLMuPiCNN's muons


def write_config(base: Path, data: Path, batch: dict, small: bool) -> Path:
    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["work_dir"] = str(base / "work")
    doc["rundb"]["snapshot"] = str(base / "rundb.csv")
    doc["data"]["raw_directory"] = str(data)
    doc["conditions"]["directory"] = str(base / "conditions")
    doc["archive"]["directory"] = str(base / "archive")
    doc["calibrations"]["directory"] = str(REPO / "calibrations")
    doc["batch"] = batch
    if small:
        doc["simulation"]["events"] = SMALL_EVENTS
    base.mkdir(parents=True, exist_ok=True)
    path = base / "bucket.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def level_ends(cfg) -> dict[str, float]:
    """Per job level, when its last task's output was written (epoch seconds)."""
    ctx = context_for(str(cfg.path))
    ends: dict[str, float] = {}
    for stage in ctx.plan.stages:
        if stage.name == "cdst_production":
            docs = [json.loads(p.read_text()) for p in (cfg.work_dir / "cdst_production").glob("r*.json")]
            ends[stage.name] = max(d["start"] + d["duration"] for d in docs)
            continue
        for level, names in enumerate(stage.groups):
            docs = [json.loads(ctx.result_path(n).read_text()) for n in names]
            ends[group_name(stage.name, level)] = max(d["start"] + d["duration"] for d in docs)
    return ends


def timed_run(config: Path, workers: int) -> tuple[float, float, dict[str, float]]:
    context_for.cache_clear()
    cfg = load_config(config)
    lines: list[str] = []
    start = time.time()
    outcome = run_bucket(cfg, workers=workers, echo=lines.append)
    wall = time.time() - start
    if outcome.exit_code != 0:
        print("\n".join(lines[-30:]))
        raise SystemExit(f"{config}: the run failed")
    return start, wall, level_ends(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the small event counts of the tests")
    parser.add_argument("--workers-local", type=int, default=2)
    parser.add_argument("--workers-slurm", type=int, default=6)
    parser.add_argument("--ttl", type=float, default=1.0, help="batch.status_cache_ttl")
    args = parser.parse_args()
    if not shutil.which("sbatch"):
        raise SystemExit("no sbatch on PATH: start a Slurm first (.ci/slurm start)")
    root = Path(tempfile.mkdtemp(prefix="b2luca-batch-bench-"))
    sim_cfg = load_config(write_config(root / "sim", root / "data", {"system": "local"}, args.small))
    t0 = time.time()
    simulate_config(sim_cfg)
    print(f"simulated the demo bucket in {time.time() - t0:.1f} s ({root})")
    runs = {}
    for name, batch in (("local", {"system": "local", "workers": args.workers_local}),
                        ("slurm", {"system": "slurm", "workers": args.workers_slurm, "status_cache_ttl": args.ttl})):
        shutil.copytree(root / "sim" / "conditions", root / name / "conditions")
        config = write_config(root / name, root / "data", batch, args.small)
        runs[name] = timed_run(config, batch["workers"])
        print(f"{name:5s}: {runs[name][1]:6.1f} s wall")
    print(f"\n{'level':16s} {'local s':>8s} {'slurm s':>8s} {'overhead s':>10s}")
    overheads = []
    prev = {k: v[0] for k, v in runs.items()}
    for level in runs["local"][2]:
        walls = {}
        for name, (_, _, ends) in runs.items():
            walls[name] = ends[level] - prev[name]
            prev[name] = ends[level]
        overheads.append(walls["slurm"] - walls["local"])
        print(f"{level:16s} {walls['local']:8.1f} {walls['slurm']:8.1f} {overheads[-1]:10.1f}")
    total = runs["slurm"][1] - runs["local"][1]
    print(f"{'whole run':16s} {runs['local'][1]:8.1f} {runs['slurm'][1]:8.1f} {total:10.1f}  "
          f"({total / len(overheads):.1f} s per level over {len(overheads)} levels; target < 5 s)")
    slurm_cfg = load_config(root / "slurm" / "bucket.yaml")
    delays = []
    for entry in read_ledger(ledger_path(slurm_cfg.work_dir)).values():
        submitted = entry["attempts"][-1]["submitted"]
        name = entry["name"]
        marker = (slurm_cfg.work_dir / "cdst_production" / f"r{name.rsplit('r', 1)[-1]}.json"
                  if name.startswith("CdstProduction") else slurm_cfg.work_dir / "calibrations" / name / "result.json")
        delays.append(json.loads(marker.read_text())["start"] - submitted)
    print(f"sbatch -> task start: mean {sum(delays) / len(delays):.1f} s, max {max(delays):.1f} s "
          f"over {len(delays)} jobs (submission, queue, interpreter and graph start-up)")


if __name__ == "__main__":
    main()
