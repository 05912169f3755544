"""The bucket's input dataset: the Belle II directory layout, and simulating it when synthetic.

Raw data lives in ``<raw>/e<EXP:04d>/r<RUN:05d>/<data_tag>/*.root`` (cDST files the same way under the
cDST directory).  For a synthetic bucket the data is produced by the toy detector; a marker file
``.b2luca-simulation.json`` records the seed and event counts so a finished simulation is never redone
and a half-finished one is never mistaken for complete.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic
from .config import BucketConfig
from .enums import DataSource, PXDBackground
from .iov import ExpRun
from .errors import DataError

MARKER = ".b2luca-simulation.json"


def run_root(root: "str | Path", exprun: ExpRun) -> Path:
    """``<root>/e<EXP:04d>/r<RUN:05d>``: one run's directory, holding a directory per data tag."""
    return Path(root) / f"e{exprun.exp:04d}" / f"r{exprun.run:05d}"


def run_directory(root: "str | Path", exprun: ExpRun, data_tag: str) -> Path:
    """``<root>/e<EXP:04d>/r<RUN:05d>/<data_tag>``."""
    if not data_tag:
        raise ValueError("run_directory needs a data tag (use run_root for the run itself)")
    return run_root(root, exprun) / data_tag


def production_runs(cfg: BucketConfig) -> list[int]:
    """Runs of the bucket that have raw data on disk (every run is reconstructed, whatever its quality)."""
    runs = []
    # the run directories that exist (not every number of the range: a range may hold a million runs)
    exp_dir = run_root(cfg.data.raw_directory, ExpRun(cfg.bucket.experiment, 0)).parent
    names = sorted(p.name for p in exp_dir.glob("r*")) if exp_dir.is_dir() else []
    for name in names:
        if not (name[1:].isdigit() and cfg.bucket.first_run <= int(name[1:]) <= cfg.bucket.last_run):
            continue
        directory = run_root(cfg.data.raw_directory, ExpRun(cfg.bucket.experiment, int(name[1:])))
        if directory.is_dir() and any(directory.glob("*/*.root")):
            runs.append(int(name[1:]))
    return sorted(runs)


def group_runs(sizes: list[tuple[int, int]], target_bytes: float) -> list[tuple[int, ...]]:
    """Consecutive runs ``[(run, raw bytes), ...]`` grouped in order: a group closes once it holds at
    least ``target_bytes`` (``target_bytes <= 0``: one group per run)."""
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    size = 0
    for run, nbytes in sizes:
        current.append(run)
        size += nbytes
        if size >= target_bytes or target_bytes <= 0:
            groups.append(tuple(current))
            current, size = [], 0
    if current:
        groups.append(tuple(current))
    return groups


def production_run_groups(cfg: BucketConfig) -> list[tuple[int, ...]]:
    """The runs of each cDST production task: consecutive runs with raw data, grouped by raw data volume
    (``data.production_task_mb``; 0 gives one group per run)."""
    sizes = []
    for run in production_runs(cfg):
        directory = run_root(cfg.data.raw_directory, ExpRun(cfg.bucket.experiment, run))
        sizes.append((run, sum(p.stat().st_size for p in directory.glob("*/*.root"))))
    return group_runs(sizes, cfg.data.production_task_mb * 1e6)


def expand_input(path: "str | Path") -> list[Path]:
    """A file, or every ``*.root`` below a directory (sorted); as basf2 reads input_data.json."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*.root") if p.is_file())
    if path.is_file():
        return [path]
    raise DataError(f"input path {path} does not exist")


def _simulation_key(cfg: BucketConfig) -> dict[str, Any]:
    sim = cfg.simulation
    assert sim is not None
    return {"bucket": cfg.name, "experiment": cfg.bucket.experiment,
            "runs": [cfg.bucket.first_run, cfg.bucket.last_run], "seed": sim.seed,
            "events": dict(sorted(sim.events.items())), "files_per_run": sim.files_per_run,
            **({"pxd_background": sim.pxd_background, "pxd_background_payload": str(sim.pxd_background_payload)}
               if sim.pxd_background != PXDBackground.NONE else {}),  # the default keeps the keys of existing simulations
            **({"weak_modes": dict(sorted(sim.weak_modes.items()))} if sim.weak_modes else {}),
            **({"movements": [dict(m) for m in sim.movements]} if sim.movements else {})}


def simulation_is_complete(cfg: BucketConfig) -> bool:
    """True when the data directory holds a finished simulation of exactly this config."""
    marker = cfg.data.raw_directory / MARKER
    if cfg.simulation is None or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == _simulation_key(cfg)
    except (OSError, json.JSONDecodeError):
        return False


def _pxd_generator(cfg: BucketConfig) -> Any:
    """The PXD background GAN of ``simulation.pxd_background_payload`` (mode gan), else None."""
    sim = cfg.simulation
    if sim is None or sim.pxd_background != PXDBackground.GAN or sim.pxd_background_payload is None:
        return None
    from .conditions.payload import read_payload
    from .ml.pxd_gan import GanBackground

    try:
        return GanBackground(read_payload(sim.pxd_background_payload))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{cfg.path}: simulation.pxd_background_payload {sim.pxd_background_payload}: "
                        f"not a usable PXDBackgroundGAN payload ({exc})") from exc


def simulate_config(cfg: BucketConfig, force: bool = False) -> str:
    """Simulate the bucket's data, truth and run list unless an identical simulation exists."""
    if cfg.data.source != DataSource.SYNTHETIC or cfg.simulation is None:
        raise DataError(f"{cfg.path}: data.source is '{cfg.data.source}': nothing to simulate")
    if simulation_is_complete(cfg) and not force:
        return f"simulation of bucket {cfg.name} already complete in {cfg.data.raw_directory}"
    from .sim import simulate_bucket

    marker = cfg.data.raw_directory / MARKER
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        summary = simulate_bucket(
            bucket=cfg.name, experiment=cfg.bucket.experiment,
            runs=list(range(cfg.bucket.first_run, cfg.bucket.last_run + 1)), seed=cfg.simulation.seed,
            events=dict(cfg.simulation.events), data_dir=cfg.data.raw_directory,
            conditions_dir=cfg.conditions.directory, files_per_run=cfg.simulation.files_per_run,
            weak_modes=dict(cfg.simulation.weak_modes),
            movements=cfg.simulation.movements,
            pxd_background_mode=cfg.simulation.pxd_background, pxd_generator=_pxd_generator(cfg))
    except OSError as exc:  # disk full, permissions ...: one line naming the file; no marker, so a rerun redoes it
        where = f" writing {exc.filename}" if exc.filename else ""
        raise DataError(f"simulation of bucket {cfg.name} into {cfg.data.raw_directory} failed{where}: "
                        f"{exc.strerror or exc}") from exc
    seconds = time.perf_counter() - start
    write_json_atomic(marker, {"key": _simulation_key(cfg), "seconds": seconds,
                               "summary": describe_summary(summary)})
    return f"simulated bucket {cfg.name} in {seconds:.1f} s: {describe_summary(summary)}"


def describe_summary(summary: Any) -> str:
    """One readable paragraph of a simulation summary (events, hits, per-sensor VXD statistics)."""
    parts = [f"runs {', '.join(map(str, summary.runs))} of experiment {summary.experiment}, "
             f"{len(summary.files)} raw files"]
    if summary.events:
        parts.append("events " + ", ".join(f"{k} {v}" for k, v in sorted(summary.events.items())))
    if summary.hits:
        parts.append("hits " + ", ".join(f"{k} {v}" for k, v in sorted(summary.hits.items())))
    per_sensor = summary.vxd_hits_per_sensor
    if per_sensor is not None and len(per_sensor):
        parts.append(f"VXD hits per sensor min {int(per_sensor.min())}, mean {float(per_sensor.mean()):.0f}")
    parts.append("global tags " + ", ".join(summary.global_tags.values()))
    return "; ".join(parts)


def ensure_data(cfg: BucketConfig) -> str | None:
    """Make sure the input data exists: simulate a synthetic bucket if needed; check real data."""
    if cfg.data.source == DataSource.SYNTHETIC:
        if simulation_is_complete(cfg):
            return None
        return simulate_config(cfg)
    if not cfg.data.raw_directory.is_dir():
        raise DataError(f"{cfg.path}: data.raw_directory {cfg.data.raw_directory} does not exist")
    return None


def build_input_data(settings: Any, snapshot: Any, data_root: "str | Path") -> dict[str, list[list[Any]]]:
    """input_data.json content for one calibration: ``{input_data_name: [[dir, [exp, run]], ...]}``.

    Runs come from the RunDB ``snapshot`` after the calibration's ``input_data_filters``; each entry is
    the run's data-tag directory under ``data_root`` (all ``*.root`` below it), when it exists.
    """
    from .rundb import data_tags, select_runs

    document: dict[str, list[list[Any]]] = {}
    for name in sorted(settings.input_data_names):
        filters = list(settings.input_data_filters.get(name, []))
        runs = select_runs(snapshot, filters)
        entries = []
        for exp, run in runs[["experiment", "run"]].itertuples(index=False):
            exprun = ExpRun(int(exp), int(run))
            for tag in data_tags(filters, default=name):
                directory = run_directory(data_root, exprun, tag)
                if directory.is_dir() and any(directory.glob("*.root")):
                    entries.append([str(directory), exprun.as_list()])
        document[name] = entries
    return document
