"""Peak resident memory per phase of a fit (Linux: ``VmHWM``, reset between phases).

numpy's and BLAS's buffers are invisible to ``tracemalloc``; the kernel's high-water mark of the resident
set sees everything. Writing ``5`` to ``/proc/self/clear_refs`` resets it, so the mark read at the end of a
phase is the peak *of that phase*. Where the reset is not allowed, the marks are the process's peak so far
(``PhasePeaks.reset_ok`` is False); off Linux nothing is measured.
"""

from __future__ import annotations

__all__ = ["PhasePeaks", "peak_rss_bytes"]


def peak_rss_bytes() -> int | None:
    """The process's resident high-water mark (bytes), or None where /proc is not available."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PhasePeaks:
    """Collects ``peaks[phase]`` = the largest resident set (bytes) seen during that phase (nothing, and no
    reset of the process's high-water mark, when not ``enabled``)."""

    def __init__(self, enabled: bool = True) -> None:
        self.peaks: dict[str, int] = {}
        self.enabled = enabled
        self.reset_ok = _reset() if enabled else False

    def end(self, phase: str) -> None:
        """Close ``phase`` (started at the previous ``end`` or at construction) and start the next one."""
        if not self.enabled:
            return
        hwm = peak_rss_bytes()
        if hwm is None:
            return
        self.peaks[phase] = max(self.peaks.get(phase, 0), hwm)
        if self.reset_ok:
            self.reset_ok = _reset()
