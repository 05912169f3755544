"""VXDCDCAlignment's solver threads follow the BLAS threads the runner grants (the calibration's ``cpus``)."""

from __future__ import annotations

import scipy.linalg  # noqa: F401  (both BLAS libraries loaded, so the limits below cover them)
from threadpoolctl import threadpool_info, threadpool_limits

import calibrations.vxdcdc_alignment as cal


def _threads_seen(monkeypatch, granted: int) -> tuple[int, list[int]]:
    seen: dict[str, object] = {}

    def fake(job, threads: int = 1) -> None:
        seen["threads"] = threads
        seen["blas"] = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    monkeypatch.setattr(cal, "_calibrate", fake)
    with threadpool_limits(granted, user_api="blas"):
        cal.calibrate(None)
    return seen["threads"], seen["blas"]  # type: ignore[return-value]


def test_solver_threads_follow_the_granted_blas_threads(monkeypatch):
    threads, blas = _threads_seen(monkeypatch, 1)
    assert threads == 1 and set(blas) == {1}
    threads, blas = _threads_seen(monkeypatch, 2)
    assert threads == 2  # a calibration with cpus: 2 assembles with two threads ...
    assert set(blas) == {1}  # ... while every BLAS runs one thread (reproducible round-off)
