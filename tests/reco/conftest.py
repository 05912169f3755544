"""Shared fixtures' building blocks for the reconstruction tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from b2luca.reco.geometry import nominal_geometry
from b2luca.reco.measurements import Constants, Measurements, build_measurements
from b2luca.reco.raw import read_raw, write_raw
from b2luca.sim import make_truth, simulate_sample
from b2luca.sim.truth import truth_payloads

GEOM = nominal_geometry()


def _simulated_measurements(tmp: Path, truth_seed: int, samples: tuple[tuple[str, int], ...],
                           sample_seed: int) -> tuple[Constants, dict[str, Measurements]]:
    """Truth constants of ``make_truth(truth_seed)`` and, per (tag, events) of ``samples``, the measurements of a
    simulated run 1 of experiment 26 (written as a raw file and read back, as a calibration reads it)."""
    truth = make_truth(truth_seed, GEOM)
    c = Constants.from_payloads(truth_payloads(truth, GEOM), GEOM)
    out = {}
    for tag, n in samples:
        res = simulate_sample(tag, n, np.random.default_rng(sample_seed), truth, GEOM, experiment=26, run=1)
        write_raw(tmp / tag / "raw_0.root", res.raw)
        out[tag] = build_measurements(read_raw(tmp / tag), c, GEOM)
    return c, out


@pytest.fixture(scope="session")
def simulated_measurements():
    """:func:`_simulated_measurements`, for the tests' module-scoped samples."""
    return _simulated_measurements
