"""simulation.movements: parts translated between runs (truth per run, truth tag per interval, config checks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from b2luca.config import ConfigError, load_config
from b2luca.conditions import LocalDatabase
from b2luca.iov import ExpRun, IoV
from b2luca.reco.geometry import aligned_frames, nominal_geometry
from b2luca.sim.simulate import write_conditions
from b2luca.sim.truth import make_truth, movement_intervals, parse_movements, truth_for_run

REPO = Path(__file__).resolve().parents[2]


def test_truth_for_run_translates_only_the_part_from_its_run():
    g = nominal_geometry()
    truth = make_truth(7, g)
    moves = parse_movements([{"part": "PXD", "from_run": 5, "shift_um": [30, 0, 0]},
                             {"part": "CDC", "from_run": 6, "shift_um": [0, -10, 0]}])
    assert truth_for_run(truth, moves, 4, g) is truth
    c0, r0 = aligned_frames(g, truth.vxd_params)
    for run, cdc_dy in ((5, 0.0), (6, -0.010)):
        t = truth_for_run(truth, moves, run, g)
        c, r = aligned_frames(g, t.vxd_params)
        np.testing.assert_allclose(c[g.is_pxd] - c0[g.is_pxd], np.tile([0.030, 0, 0], (int(g.is_pxd.sum()), 1)),
                                   atol=1e-12)
        np.testing.assert_allclose(c[~g.is_pxd], c0[~g.is_pxd], atol=1e-12)
        np.testing.assert_allclose(r, r0, atol=1e-12)  # a translation, no rotation
        np.testing.assert_allclose(t.cdc_params[:, 1] - truth.cdc_params[:, 1], cdc_dy, atol=1e-12)
    assert movement_intervals(moves, [3, 4, 5, 6, 7]) == [(3, 4), (5, 5), (6, 7)]


def test_truth_tag_has_one_iov_per_interval(tmp_path):
    g = nominal_geometry()
    truth = make_truth(7, g)
    moves = parse_movements([{"part": "PXD+X", "from_run": 5, "shift_um": [0, 20, 0]}])
    names = write_conditions(tmp_path, "b", 26, [4, 5, 6], 7, truth, g, moves)
    db = LocalDatabase(tmp_path / names["truth"])
    iovs = sorted((e.iov for e in db.entries() if e.name == "VXDAlignment"), key=lambda i: i.run_low)
    assert iovs == [IoV(26, 4, 26, 4), IoV(26, 5, 26, 6)]
    before, after = db.read("VXDAlignment", ExpRun(26, 4)), db.read("VXDAlignment", ExpRun(26, 6))
    moved = g.halfshell == 0
    dc = aligned_frames(g, after["params"])[0] - aligned_frames(g, before["params"])[0]
    np.testing.assert_allclose(dc[moved], np.tile([0, 0.020, 0], (int(moved.sum()), 1)), atol=1e-12)
    np.testing.assert_allclose(dc[~moved], 0.0, atol=1e-12)


def test_parse_movements_reports_every_problem():
    with pytest.raises(ValueError) as err:
        parse_movements([{"part": "TOP", "from_run": -1, "shift_um": [1, 2]}, {"part": "CDC", "from_run": 2,
                                                                             "shift_um": [0, 0, 5]}, {"part": "PXD"}])
    text = str(err.value)
    assert len(text.splitlines()) == 5, text
    for needle in ("movements[0].part: unknown part 'TOP'", "movements[0].from_run", "movements[0].shift_um",
                   "movements[1].shift_um: the CDC layers have no z", "movements[2]: missing key(s) from_run, shift_um"):
        assert needle in text


def test_config_movements_key_and_cross_checks(tmp_path):
    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["simulation"]["movements"] = [{"part": "PXD", "from_run": 5, "shift_um": [30, 0, 0]}]
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(doc))
    cfg = load_config(path)
    assert cfg.simulation is not None and cfg.simulation.movements == ({"part": "PXD", "from_run": 5,
                                                                        "shift_um": [30, 0, 0]},)
    doc["simulation"]["movements"] = [{"part": "CDC", "from_run": 99, "shift_um": [0, 0, 1]},
                                      {"part": "KLM", "from_run": 2, "shift_um": [0, 0, 0]}]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"simulation\.movements\[1\]\.part"):
        load_config(path)
    doc["simulation"]["movements"] = doc["simulation"]["movements"][:1]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "simulation.movements[0].shift_um: the CDC layers have no z" in str(err.value)
    assert "simulation.movements[0].from_run: must be a run of the bucket" in str(err.value)
