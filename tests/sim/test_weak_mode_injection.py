"""simulation.weak_modes: weak-mode distortions injected into the truth (additive, from b2luca.alignment.weak_modes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from b2luca.alignment import weak_modes as W
from b2luca.alignment.frame import truth_in_frame
from b2luca.config import ConfigError, load_config, load_schema
from b2luca.dataset import _simulation_key
from b2luca.reco.geometry import nominal_geometry
from b2luca.sim.truth import make_truth, truth_payloads

REPO = Path(__file__).resolve().parents[2]
INJECT = {"vxd_radial_expansion_um": 20.0, "cdc_twist_urad": 50.0}


def test_injection_is_additive_and_recoverable():
    g = nominal_geometry()
    plain, bent = make_truth(11, g), make_truth(11, g, INJECT)
    dv, dc = W.distortion(INJECT, g)
    np.testing.assert_allclose(bent.vxd_params - plain.vxd_params, dv, atol=1e-15)
    np.testing.assert_allclose(bent.cdc_params - plain.cdc_params, dc, atol=1e-15)
    np.testing.assert_array_equal(bent.cdc_t0, plain.cdc_t0)  # the random draws are unchanged
    np.testing.assert_array_equal(bent.beam_position, plain.beam_position)
    np.testing.assert_array_equal(make_truth(11, g, {}).vxd_params, plain.vxd_params)
    # the truth payloads carry it, and the projection of (bent - plain) in the frame gives the amplitudes back
    tp = truth_payloads(bent, g)
    lay = W.parameter_layout(g)
    _fr = truth_in_frame(tp["VXDAlignment"]["params"], tp["CDCAlignment"]["params"], geom=g)
    tv, tc = _fr.vxd, _fr.cdc
    _fr = truth_in_frame(plain.vxd_params, plain.cdc_params, geom=g)
    pv, pc = _fr.vxd, _fr.cdc
    p = W.project(lay.pack(tv - pv, tc - pc), None, names=W.MODE_NAMES, geom=g).as_dict()
    assert p["vxd_radial_expansion_um"][0] == pytest.approx(20.0, abs=0.01)
    assert p["cdc_twist_urad"][0] == pytest.approx(50.0, abs=0.01)
    assert all(abs(a) < 0.01 for n, (a, _e) in p.items() if n not in INJECT)


def _demo_with(tmp_path: Path, weak_modes) -> Path:
    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["simulation"]["weak_modes"] = weak_modes
    doc["work_dir"] = str(tmp_path / "work")
    path = tmp_path / "bucket.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_config_block(tmp_path):
    cfg = load_config(_demo_with(tmp_path, {"vxd_radial_expansion_um": 20, "cdc_twist_urad": 50}))
    assert cfg.simulation is not None and cfg.simulation.weak_modes == INJECT
    # a finished simulation without the injection is not reused for one with it
    plain = load_config(REPO / "configs" / "demo.yaml")
    assert _simulation_key(cfg)["weak_modes"] == INJECT and "weak_modes" not in _simulation_key(plain)
    assert plain.simulation is not None and plain.simulation.weak_modes == {}
    with pytest.raises(ConfigError, match=r"simulation\.weak_modes.*vxd_radial_um"):
        load_config(_demo_with(tmp_path, {"vxd_radial_um": 20}))
    with pytest.raises(ConfigError, match=r"simulation\.weak_modes\.cdc_twist_urad"):
        load_config(_demo_with(tmp_path, {"cdc_twist_urad": "fifty"}))


def test_schema_lists_exactly_the_modes():
    prop = load_schema(1)["properties"]["simulation"]["properties"]["weak_modes"]
    assert tuple(prop["propertyNames"]["enum"]) == W.MODE_NAMES
