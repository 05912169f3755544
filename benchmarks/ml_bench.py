"""Time the ECLMuPiCNN and PXDBackgroundGAN trainings on the demo bucket (run `b2luca run configs/demo.yaml` first).

    python benchmarks/ml_bench.py [--work work/demo] [--config configs/demo.yaml] [--only cnn|gan]
                                  [--gan-seeds 16,18,19] [--gan-override '{"eval_every": 0}']

PXDBackgroundGAN: reads the random_calib background of the demo job's input files and trains with the
demo's expert_config (the generator iterations, wall and CPU time, the clusters the critic sees), then
times the generation of the background of 100 events.  ``--gan-seeds``: trains once per seed and prints the validation's image
statistics (part (a): occupancy, mean cluster size, worst hit-map bin, each against its limit) of the
generator on the validation's events, with as many generated events as the validation generates
(``generated_events``), the snapshot kept by the held-out monitor and its score: the quality of a
training setting on seeds other than the demo's (issue 15).  ``--gan-override``: expert_config values (JSON)
on top of the demo's, e.g. to compare a setting with and without one change.

Prints the number of candidates, the seconds to read the images and to train both charge models with the
demo's expert_config (wall and CPU time: on an idle machine the wall time is about the CPU time divided by
the threads used), and the load average before and after (the machine is shared: say how busy it was).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "work" / "demo"))
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--only", choices=("cnn", "gan"), default=None)
    parser.add_argument("--gan-seeds", default=None, help="comma-separated seeds: GAN quality per training seed")
    parser.add_argument("--gan-override", default="{}", help="JSON expert_config values on top of the demo's (--gan-seeds)")
    args = parser.parse_args()
    if args.gan_seeds:
        gan_quality(args, [int(x) for x in args.gan_seeds.split(",")])
        return 0
    if args.only != "gan":
        bench_cnn(args)
    if args.only != "cnn":
        bench_gan(args)
    return 0


def bench_gan(args: argparse.Namespace) -> None:
    """Time the PXDBackgroundGAN training and generation with the demo's expert_config."""
    import numpy as np
    import yaml

    from b2luca.contract import read_input_data
    from b2luca.ml.pxd_gan import GanBackground, train
    from b2luca.reco.geometry import nominal_geometry
    from calibrations.pxd_background_gan import read_background, settings

    job = Path(args.work) / "calibrations" / "PXDBackgroundGAN"
    overrides = yaml.safe_load(Path(args.config).read_text())["calibrations"].get("expert_config", {}).get(settings.name, {})
    cfg = {**settings.expert_config, **overrides}
    geom = nominal_geometry()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    pixels, n_events = read_background([p for p, _ in read_input_data(job / "input_data.json")["random_calib"]],
                                       int(cfg["max_events"]))
    t1, cpu1 = time.perf_counter(), time.process_time()
    arrays, figures = train(pixels, n_events, geom, cfg, logging.getLogger("bench"))
    t2, cpu2 = time.perf_counter(), time.process_time()
    GanBackground(arrays)(np.random.default_rng(1), 100, geom)
    t3 = time.perf_counter()
    try:  # a rerun with the same data and settings must give the payload the demo stored
        from calibrations._common import calibration_output

        stored = calibration_output(job, settings.name, settings.name)
        identical: bool | str = all(np.array_equal(stored[k], v) for k, v in arrays.items())
    except (FileNotFoundError, KeyError) as exc:
        identical = f"no demo payload to compare ({exc})"
    print(json.dumps({"calibration": settings.name,
                      "config": {k: cfg[k] for k in ("patch_v", "patch_u", "hidden", "generator_iterations", "threads",
                                                     "device")},
                      "events": n_events, "clusters": figures["clusters"], "read_s": round(t1 - t0, 1),
                      "train_s": round(t2 - t1, 1), "train_cpu_s": round(cpu2 - cpu1, 1),
                      "generate_100_events_s": round(t3 - t2, 1), "identical_to_demo_payload": identical,
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count()}, indent=1))


def gan_quality(args: argparse.Namespace, seeds: list[int]) -> None:
    """Train the GAN with the demo's expert_config once per seed; print the validation's image statistics."""
    import numpy as np
    import yaml

    from b2luca.contract import read_input_data
    from b2luca.ml.pxd_gan import GanBackground, train
    from b2luca.reco.geometry import nominal_geometry
    from calibrations.pxd_background_gan import read_background, settings
    from calibrations.validations import pxd_background_gan as validation

    job = Path(args.work) / "calibrations" / "PXDBackgroundGAN"
    overrides = yaml.safe_load(Path(args.config).read_text())["calibrations"].get("expert_config", {}).get(settings.name, {})
    files = [p for p, _ in read_input_data(job / "input_data.json")["random_calib"]]
    geom = nominal_geometry()
    vcfg = dict(validation.settings.expert_config)
    ref_pixels, n_ref = read_background(files, int(vcfg["max_events"]))
    ref = validation.image_statistics(ref_pixels, n_ref, geom)
    n_gen = validation.generated_events(ref, vcfg)  # what the validation generates
    for seed in seeds:
        cfg = {**settings.expert_config, **overrides, **json.loads(args.gan_override), "seed": seed}
        pixels, n_events = read_background(files, int(cfg["max_events"]))
        load_before = os.getloadavg()
        t0, cpu0 = time.perf_counter(), time.process_time()
        arrays, figures = train(pixels, n_events, geom, cfg)
        t1, cpu1 = time.perf_counter(), time.process_time()
        gen = GanBackground(arrays)(np.random.default_rng(int(vcfg["validation_seed"])), n_gen, geom)
        fig, reasons = validation.compare_images(ref, validation.image_statistics(gen, n_gen, geom), vcfg)
        keys = ("occupancy_gan", "occupancy_input", "occupancy_limit", "mean_cluster_size_gan",
                "mean_cluster_size_input", "mean_cluster_size_limit", "hitmap_max_relative_difference")
        print(json.dumps({"seed": seed, "override": json.loads(args.gan_override), "events_generated": n_gen, "train_s": round(t1 - t0, 1), "train_cpu_s": round(cpu1 - cpu0, 1),
                          "kept_iteration": figures.get("kept_iteration"),
                          "heldout_score": round(figures.get("heldout_score", float("nan")), 3),
                          "occupancy_rel": round(fig["occupancy_gan"] / fig["occupancy_input"] - 1, 3),
                          "cluster_size_rel": round(fig["mean_cluster_size_gan"] / fig["mean_cluster_size_input"] - 1, 3),
                          **{k: round(fig[k], 4) for k in keys}, "passed": not reasons, "reasons": reasons,
                          "loadavg_before": load_before, "loadavg_after": os.getloadavg()}), flush=True)


def bench_cnn(args: argparse.Namespace) -> None:
    """Time the ECLMuPiCNN training with the demo's expert_config."""
    import numpy as np
    import yaml

    from b2luca.ml.ecl_cnn import train
    from b2luca.contract import read_input_data
    from calibrations.ecl_mupi_cnn import samples, settings

    job = Path(args.work) / "calibrations" / "ECLMuPiCNN"
    overrides = yaml.safe_load(Path(args.config).read_text())["calibrations"].get("expert_config", {}).get(settings.name, {})
    cfg = {**settings.expert_config, **overrides}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    mu, pi = samples(read_input_data(job / "input_data.json"), np.ones(6624), cfg)
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    _, figures = train(mu, pi, cfg, logging.getLogger("bench"))
    t2 = time.perf_counter()
    cpu2 = time.process_time()
    print(json.dumps({"config": {k: cfg[k] for k in ("n_maps", "hidden", "epochs", "threads", "device")},
                      "muon_candidates": len(mu), "pion_candidates": len(pi), "read_images_s": round(t1 - t0, 1),
                      "train_s": round(t2 - t1, 1),
                      "train_cpu_s": round(cpu2 - cpu1, 1), "best_epochs": [figures["pos_best_epoch"], figures["neg_best_epoch"]],
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
