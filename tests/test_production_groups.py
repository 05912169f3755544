"""cDST production of several runs in one call (issue 15): the same files as run by run, constants read once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import b2luca.production as production
from b2luca.conditions import DatabaseChain, LocalDatabase
from b2luca.iov import ExpRun
from b2luca.production import GROUP_TREES, ProductionError, produce_run, produce_runs, read_cdst, read_manifest

EXP, RUNS = 26, (1, 2, 3)
EVENTS = {"mumu_tight_or_highm_calib": 60, "hadron_calib": 30, "cosmic_calib": 15, "random_calib": 2}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from b2luca.sim import simulate_bucket

    root = tmp_path_factory.mktemp("prodgroups")
    summary = simulate_bucket(bucket="g", experiment=EXP, runs=list(RUNS), seed=5, events=EVENTS,
                              data_dir=root / "raw", conditions_dir=root / "conditions", files_per_run=2)
    chain = DatabaseChain([LocalDatabase(root / "conditions" / summary.global_tags["truth"])])
    return root, chain


def _jobs(root: Path, name: str) -> list[tuple[Path, Path, ExpRun]]:
    rel = [Path(f"e{EXP:04d}") / f"r{run:05d}" for run in RUNS]
    return [(root / "raw" / r, root / name / r, ExpRun(EXP, run)) for r, run in zip(rel, RUNS)]


def test_grouped_production_equals_run_by_run_and_reads_constants_once(sim, monkeypatch):
    root, chain = sim
    singles = [produce_run(raw, cdst, chain, er) for raw, cdst, er in _jobs(root, "single")]
    calls = []
    load = production.load_constants
    monkeypatch.setattr(production, "load_constants", lambda *a, **k: calls.append(a[1]) or load(*a, **k))
    grouped = produce_runs(_jobs(root, "grouped"), chain)
    assert len(calls) == 1  # one payload set for the three runs: read once
    for one, many in zip(singles, grouped):
        assert {k: one[k] for k in ("tags", "files", "tracks", "computed", "failed_fits", "payloads")} == \
               {k: many[k] for k in ("tags", "files", "tracks", "computed", "failed_fits", "payloads")}
    assert sum(sum(s["tracks"].values()) for s in grouped) > 100
    trees = tuple(t for ts in GROUP_TREES.values() for t in ts)
    for (_, a, _), (_, b, _) in zip(_jobs(root, "single"), _jobs(root, "grouped")):
        assert read_manifest(b) is not None
        for fa in sorted(a.rglob("cdst_*.root")):
            one, many = read_cdst(fa, trees), read_cdst(b / fa.relative_to(a), trees)
            for tree in trees:
                assert one[tree].keys() == many[tree].keys()
                for branch, x in one[tree].items():
                    # each track is fitted on its own: the batch changes at most the last bits
                    np.testing.assert_allclose(many[tree][branch], x, rtol=1e-9, atol=1e-12, err_msg=f"{tree}.{branch}")


def test_grouped_production_reports_every_missing_run_before_writing(sim, tmp_path):
    root, chain = sim
    jobs = _jobs(root, "never")
    jobs[0] = (tmp_path / "nowhere1", jobs[0][1], jobs[0][2])
    jobs[2] = (tmp_path / "nowhere3", jobs[2][1], jobs[2][2])
    with pytest.raises(ProductionError) as err:
        produce_runs(jobs, chain)
    assert "nowhere1" in str(err.value) and "nowhere3" in str(err.value)
    assert not (root / "never").exists()  # nothing written for the good run either


def test_batches_are_bounded_and_split_by_tag(sim, monkeypatch):
    root, chain = sim
    monkeypatch.setattr(production, "BATCH_BYTES", 1)  # every file its own batch: still the same output
    out = produce_runs(_jobs(root, "tiny"), chain)
    ref = produce_runs(_jobs(root, "big"), chain)
    assert [s["tracks"] for s in out] == [s["tracks"] for s in ref]
    jobs = [job for run in [production._plan_run(*j, chain, False) for j in _jobs(root, "plan")]
            for job in production._file_jobs(run, chain)]
    batches = production._batches(jobs)
    assert all(len({j.tag for j in b}) == 1 for b in batches)
    assert sum(len(b) for b in batches) == len(jobs) == len(list((root / "raw").rglob("raw_*.root"))) > len(RUNS) * 4
