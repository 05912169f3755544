"""The total event cap spread over the runs (issue 15): every run represented, deterministic, lazy, per-file cap kept."""

from __future__ import annotations

from pathlib import Path

from b2luca.input_sample import select_events


def _entries(events_per_file: dict[str, int], runs: dict[str, int]):
    return [(Path(f), runs[f]) for f in events_per_file]


def test_total_cap_is_shared_equally_by_the_runs_and_deterministic():
    files = {f"r{r}_{k}": 10 for r in range(1, 5) for k in range(2)}  # 4 runs x 2 files x 10 events
    runs = {f: int(f[1]) for f in files}
    picked = select_events(_entries(files, runs), lambda f: files[str(f)], max_events=20)
    assert picked == [(Path(f"r{r}_0"), r, 5) for r in range(1, 5)]  # 5 per run, from each run's first file
    assert select_events(_entries(files, runs), lambda f: files[str(f)], max_events=20) == picked


def test_a_short_run_gives_its_share_to_the_others_and_files_are_looked_at_lazily():
    files = {"a0": 2, "b0": 30, "b1": 30, "c0": 30, "c1": 30}
    runs = {"a0": "a", "b0": "b", "b1": "b", "c0": "c", "c1": "c"}
    looked: list[str] = []
    picked = select_events(_entries(files, runs), lambda f: looked.append(str(f)) or files[str(f)], max_events=32)
    assert {str(f): n for f, _, n in picked} == {"a0": 2, "b0": 16, "c0": 14}  # 11 + 5 and 10 + 4 (the odd event to the first run)
    assert sorted(looked) == ["a0", "b0", "c0"]  # the runs' second files were never needed


def test_per_file_cap_applies_and_equals_the_old_behaviour_when_the_total_does_not_bind():
    files = {f"r{r}": 100 for r in range(8)}
    runs = {f: int(f[1]) for f in files}
    per_file = select_events(_entries(files, runs), lambda f: files[str(f)], max_events_per_file=60)
    assert [n for _, _, n in per_file] == [60] * 8
    # total = 8 x the per-file cap: the same sample as the per-file cap alone
    assert select_events(_entries(files, runs), lambda f: files[str(f)], 480, 60) == per_file
    # the same events over 200 runs: the total still gives 480 events, every run represented
    small = {f"s{r:03d}": 4 for r in range(200)}
    picked = select_events(_entries(small, {f: f for f in small}), lambda f: small[str(f)], 480, 60)
    assert sum(n for _, _, n in picked) == 480 and len(picked) == 200


def test_total_larger_than_the_data_reads_everything_and_zero_events_are_skipped():
    files = {"x": 3, "y": 0, "z": 5}
    picked = select_events(_entries(files, {"x": 1, "y": 2, "z": 3}), lambda f: files[str(f)], max_events=1000)
    assert [(str(f), n) for f, _, n in picked] == [("x", 3), ("z", 5)]
