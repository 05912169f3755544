"""Peak memory per phase (VmHWM, reset between phases)."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment.rss import PhasePeaks, peak_rss_bytes


def test_phase_peaks_tell_a_big_phase_from_a_small_one():
    if peak_rss_bytes() is None:
        pytest.skip("no /proc/self/status on this system")
    pp = PhasePeaks()
    a = np.ones(50_000_000)  # 400 MB touched (served by mmap: given back when freed)
    del a
    pp.end("big")
    pp.end("small")
    assert pp.peaks["big"] >= 400e6
    if not pp.reset_ok:
        pytest.skip("the kernel refused to reset the high-water mark")
    assert pp.peaks["big"] - pp.peaks["small"] >= 300e6


def test_disabled_measures_nothing():
    pp = PhasePeaks(enabled=False)
    pp.end("x")
    assert pp.peaks == {} and not pp.reset_ok


def test_fit_reports_peak_per_phase(toy):
    from b2luca.alignment import AlignmentProblem, solve

    problem = AlignmentProblem.from_steering(toy.steering)
    problem.phase_memory = True
    res = solve(problem, method="sparse")
    peaks = res.info["peak_rss_bytes"]
    assert {"pass", "prepare", "factorise", "solve", "errors"} <= set(peaks)
    assert all(v > 10e6 for v in peaks.values())
    quiet = solve(AlignmentProblem.from_steering(toy.steering), method="sparse")
    assert "peak_rss_bytes" not in quiet.info
