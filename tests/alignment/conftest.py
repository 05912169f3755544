"""Shared toy alignment problems with known truth (generated, small, fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from b2luca.alignment import Assembler, write_mille
from b2luca.alignment.toy import barrel_geometry, generate_tracks


@dataclass
class Toy:
    folder: Path
    steering: Path
    datafile: Path
    labels: np.ndarray
    truth: np.ndarray
    N: np.ndarray  # exact null modes of the normal matrix (orthonormal columns)
    records: object


def make_toy(folder: Path, n_params: int = 300, n_tracks: int = 20000, seed: int = 7,
             extra_steer: str = "", method: str = "inversion") -> Toy:
    geo = barrel_geometry(n_params, n_layers=5)
    rng = np.random.default_rng(seed)
    scale = np.tile([0.1, 0.1, 0.1, 5e-4, 5e-4, 5e-4], geo.n_sensors)
    truth = scale * rng.normal(size=scale.size)
    recs = generate_tracks(geo, n_tracks, truth, rng)
    datafile = folder / "toy.bin"
    write_mille(datafile, recs)
    asm = Assembler()
    asm.add(recs)
    gs = asm.finish()
    assert np.array_equal(gs.labels, geo.labels)
    C = gs.C.toarray()
    d = 1.0 / np.sqrt(np.diag(C))
    ev, V = np.linalg.eigh(C * d[:, None] * d[None, :])
    null = ev < 1e-10 * ev[-1]
    N = V[:, null] * d[:, None]
    N, _ = np.linalg.qr(N)
    lines = ["! exact null modes of the toy"]
    for k in range(N.shape[1]):
        lines.append("Constraint 0.0")
        lines += [f"{lab} {f:.17e}" for lab, f in zip(geo.labels, N[:, k]) if abs(f) > 0]
    (folder / "cons.txt").write_text("\n".join(lines) + "\n")
    steer = folder / "steer.txt"
    steer.write_text(f"Cfiles\n{datafile.name}\ncons.txt\nmethod {method} 1 0.1\n{extra_steer}end\n")
    return Toy(folder, steer, datafile, geo.labels, truth, N, recs)


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Toy:
    return make_toy(tmp_path_factory.mktemp("toy"))
