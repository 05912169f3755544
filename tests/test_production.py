"""cDST production: files, tracks, manifest, and the partial re-production after new constants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from b2luca.conditions import DatabaseChain, LocalDatabase
from b2luca.iov import ExpRun, IoV
from b2luca.rootio import read_trees
from b2luca.production import (GROUP_TREES, ProductionError, manifest_is_current, produce_run, read_cdst,
                               read_manifest)

EXP, RUN = 26, 1
EVENTS = {"mumu_tight_or_highm_calib": 300, "bhabha_all_calib": 150, "hadron_calib": 80, "cosmic_calib": 40,
          "random_calib": 5}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from b2luca.sim import simulate_bucket

    root = tmp_path_factory.mktemp("prod")
    summary = simulate_bucket(bucket="p", experiment=EXP, runs=[RUN], seed=99, events=EVENTS,
                              data_dir=root / "raw", conditions_dir=root / "conditions")
    return root, summary.global_tags


def _dirs(root: Path, name: str) -> tuple[Path, Path]:
    rel = Path(f"e{EXP:04d}") / f"r{RUN:05d}"
    return root / "raw" / rel, root / name / rel


def _chain(root: Path, tags: dict, prompt: str) -> tuple[DatabaseChain, LocalDatabase]:
    prompt_db = LocalDatabase(root / prompt).create()
    return DatabaseChain([prompt_db, LocalDatabase(root / "conditions" / tags["truth"])]), prompt_db


def test_first_production_writes_cdst_and_manifest(sim):
    root, tags = sim
    raw_dir, cdst_dir = _dirs(root, "cdst_a")
    chain, _ = _chain(root, tags, "prompt_a")
    summary = produce_run(raw_dir, cdst_dir, chain, ExpRun(EXP, RUN))
    json.dumps(summary)  # JSON-able
    assert summary["tags"] == sorted(EVENTS)
    assert summary["files"] == len(EVENTS)
    assert summary["computed"] == {"hits": 5, "tracks": 5, "ecl": 5}
    assert summary["tracks"]["mumu_tight_or_highm_calib"] >= 0.95 * 2 * EVENTS["mumu_tight_or_highm_calib"]
    assert summary["tracks"]["random_calib"] == 0
    assert summary["payloads"]["VXDAlignment"] == 1  # the truth tag's revision
    for tag in EVENTS:
        path = cdst_dir / tag / "cdst_0.root"
        assert path.is_file()
        got = read_trees(path, {t: None for trees in GROUP_TREES.values() for t in trees})
        assert set(got) == {t for trees in GROUP_TREES.values() for t in trees}, tag
    manifest = read_manifest(cdst_dir)
    assert set(manifest["groups"]) == {"hits", "tracks", "ecl"}
    assert manifest["groups"]["tracks"]["VXDAlignment"]["revision"] == 1
    assert manifest_is_current(cdst_dir, chain, ExpRun(EXP, RUN))

    # the raw hits are copied unchanged, the tracks carry the fit, the relation points back to the hits
    from b2luca.reco.raw import read_raw

    raw = read_raw(raw_dir / "mumu_tight_or_highm_calib")
    data = read_cdst(cdst_dir / "mumu_tight_or_highm_calib", ("cdc", "svd", "tracks", "track_hits"))
    np.testing.assert_array_equal(data["cdc"]["tdc"], raw["cdc"]["tdc"])
    truth_t0 = chain.read("CDCTimeZeros", ExpRun(EXP, RUN))["t0"]
    np.testing.assert_allclose(data["cdc"]["drift_time"], raw["cdc"]["tdc"] - truth_t0[raw["cdc"]["board"]], atol=1e-3)
    trk, rel = data["tracks"], data["track_hits"]
    cdc_rows = rel["det"] == 2
    hit = rel["hit"][cdc_rows]
    t = rel["track"][cdc_rows]
    np.testing.assert_array_equal(data["cdc"]["event"][hit], trk["event"][t])
    np.testing.assert_array_equal(data["cdc"]["cand"][hit], trk["cand"][t])
    # muons from the IP with the true constants: chi2/ndf near 1, momenta near the beam kinematics
    assert 0.8 < np.median(trk["chi2"] / trk["ndf"]) < 1.3
    assert np.all(trk["cov_00"] > 0) and np.all(np.isfinite(trk["d0"]))
    assert 3.0 < np.median(trk["p"]) < 7.5
    # ECL clusters: energy = sum of constant * amplitude of the cluster's crystals
    ecl = read_cdst(cdst_dir / "bhabha_all_calib", ("ecl", "ecl_clusters"))
    const = chain.read("ECLCrystalEnergy", ExpRun(EXP, RUN))["constant"]
    assert np.isclose(ecl["ecl_clusters"]["energy"].sum(),
                      np.sum(const[ecl["ecl"]["crystal"]] * ecl["ecl"]["amplitude"].astype(float)), rtol=1e-6)
    assert ecl["ecl_clusters"]["event"].size >= 0.9 * 2 * EVENTS["bhabha_all_calib"]


def test_new_alignment_recomputes_only_tracks(sim):
    root, tags = sim
    raw_dir, cdst_dir = _dirs(root, "cdst_b")
    chain, prompt = _chain(root, tags, "prompt_b")
    exprun = ExpRun(EXP, RUN)
    produce_run(raw_dir, cdst_dir, chain, exprun)
    before = read_cdst(cdst_dir / "mumu_tight_or_highm_calib", ("tracks", "svd", "ecl_clusters"))
    # nothing changed: the second call keeps every file as it is
    mtimes = {p: p.stat().st_mtime_ns for p in cdst_dir.rglob("cdst_*.root")}
    summary = produce_run(raw_dir, cdst_dir, chain, exprun)
    assert summary["computed"] == {"hits": 0, "tracks": 0, "ecl": 0}
    assert {p: p.stat().st_mtime_ns for p in cdst_dir.rglob("cdst_*.root")} == mtimes
    # a refined alignment in the prompt database at the front of the chain
    vxd = chain.read("VXDAlignment", exprun)
    vxd["params"] = vxd["params"].copy()
    vxd["params"][:, 0] += 0.05  # every sensor 50 um along u
    prompt.store("VXDAlignment", vxd, IoV(EXP, RUN, -1, -1))
    assert not manifest_is_current(cdst_dir, chain, exprun)
    summary = produce_run(raw_dir, cdst_dir, chain, exprun)
    assert summary["computed"] == {"hits": 0, "tracks": 5, "ecl": 0}
    assert summary["copied"] == {"hits": 5, "tracks": 0, "ecl": 5}
    manifest = read_manifest(cdst_dir)
    for records in manifest["files"].values():
        assert records[0]["groups"] == {"hits": "copied", "tracks": "computed", "ecl": "copied"}
    assert manifest["groups"]["tracks"]["VXDAlignment"]["database"] == str(prompt.path.resolve())
    assert manifest["history"][-1]["computed"]["tracks"] == 5
    assert manifest_is_current(cdst_dir, chain, exprun)
    after = read_cdst(cdst_dir / "mumu_tight_or_highm_calib", ("tracks", "svd", "ecl_clusters"))
    for tree in ("svd", "ecl_clusters"):  # copied groups: identical content
        for key in before[tree]:
            np.testing.assert_array_equal(after[tree][key], before[tree][key])
    # recomputed tracks moved: the fit saw the new sensor positions
    assert after["tracks"]["d0"].size == before["tracks"]["d0"].size
    assert np.median(np.abs(after["tracks"]["d0"] - before["tracks"]["d0"])) > 0.01


def test_new_t0_recomputes_hits_and_tracks(sim):
    root, tags = sim
    raw_dir, cdst_dir = _dirs(root, "cdst_c")
    chain, prompt = _chain(root, tags, "prompt_c")
    exprun = ExpRun(EXP, RUN)
    produce_run(raw_dir, cdst_dir, chain, exprun)
    t0 = chain.read("CDCTimeZeros", exprun)
    t0["t0"] = t0["t0"] + 1.0
    prompt.store("CDCTimeZeros", t0, IoV(EXP, RUN, -1, -1))
    summary = produce_run(raw_dir, cdst_dir, chain, exprun)
    assert summary["computed"] == {"hits": 5, "tracks": 5, "ecl": 0}


def test_changed_raw_file_is_recomputed_and_bad_input_is_named(sim, tmp_path):
    root, tags = sim
    raw_src, _ = _dirs(root, "x")
    raw_dir = tmp_path / "raw" / "r00001"
    shutil.copytree(raw_src, raw_dir)
    cdst_dir = tmp_path / "cdst"
    chain, _ = _chain(root, tags, "prompt_d")
    exprun = ExpRun(EXP, RUN)
    produce_run(raw_dir, cdst_dir, chain, exprun)
    target = raw_dir / "cosmic_calib" / "raw_0.root"
    shutil.copy(raw_src / "mumu_tight_or_highm_calib" / "raw_0.root", target)  # new content, same name
    summary = produce_run(raw_dir, cdst_dir, chain, exprun)
    assert summary["computed"] == {"hits": 1, "tracks": 1, "ecl": 1}
    target.write_bytes(b"not a ROOT file")
    with pytest.raises(Exception, match="cosmic_calib/raw_0.root"):
        produce_run(raw_dir, cdst_dir, chain, exprun)
    with pytest.raises(ProductionError, match="does not exist"):
        produce_run(tmp_path / "nowhere", cdst_dir, chain, exprun)
    # a damaged manifest is not current, and production starts afresh
    (cdst_dir / "manifest.json").write_text("{")
    assert not manifest_is_current(cdst_dir, chain, exprun)
    with pytest.raises(ProductionError, match="manifest.json"):
        read_manifest(cdst_dir)
    summary = produce_run(raw_src, cdst_dir, chain, exprun)
    assert summary["computed"] == {"hits": 5, "tracks": 5, "ecl": 5}
    assert manifest_is_current(cdst_dir, chain, exprun)


def test_fit_options_are_part_of_the_tracks_fingerprint(sim):
    root, tags = sim
    raw_dir, cdst_dir = _dirs(root, "cdst_e")
    chain, _ = _chain(root, tags, "prompt_e")
    exprun = ExpRun(EXP, RUN)
    produce_run(raw_dir, cdst_dir, chain, exprun)
    plain = read_cdst(cdst_dir / "hadron_calib")["tracks"]
    assert not manifest_is_current(cdst_dir, chain, exprun, scattering=True)
    summary = produce_run(raw_dir, cdst_dir, chain, exprun, scattering=True)
    assert summary["computed"] == {"hits": 0, "tracks": 5, "ecl": 0}
    assert manifest_is_current(cdst_dir, chain, exprun, scattering=True)
    assert not manifest_is_current(cdst_dir, chain, exprun)
    kinks = read_cdst(cdst_dir / "hadron_calib")["tracks"]
    # soft pions scatter: with the kinks in the fit the chi2/ndf comes down to ~1
    assert np.median(kinks["chi2"] / kinks["ndf"]) < 1.3 < np.median(plain["chi2"] / plain["ndf"])


def test_resolved_raw_path_resolves_the_directory_once_and_follows_a_linked_file(tmp_path):
    from b2luca.production import _resolved

    real = tmp_path / "real"
    real.mkdir()
    (real / "raw_1.root").write_bytes(b"x")
    (tmp_path / "linked_dir").symlink_to(real)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "raw_9.root").write_bytes(b"y")
    (real / "raw_2.root").symlink_to(elsewhere / "raw_9.root")
    cache: dict = {}
    assert _resolved(tmp_path / "linked_dir" / "raw_1.root", cache) == str((real / "raw_1.root").resolve())
    assert cache == {tmp_path / "linked_dir": real.resolve()}
    # a raw file that is itself a link is recorded where it points, as Path.resolve() does
    assert _resolved(tmp_path / "linked_dir" / "raw_2.root", cache) == str((elsewhere / "raw_9.root").resolve())
