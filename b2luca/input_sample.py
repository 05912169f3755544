"""A bounded input sample spread over the runs of a bucket: which leading events of which files a calibration reads.

basf2's prompt scripts bound their input per file (``<collection>.max_processed_events_per_file``, the first
events of every file), per run (``max_files_per_run``, ``max_events_per_run`` in ``prompt.utils``) or by
picking whole files at random until a total is reached (``filter_by_select_max_events_from_files``).  A cap
per file or per run makes the sample, and the calibration's time, grow with the number of runs: the same
events spread over 200 small runs instead of 8 large ones are read whole.  :func:`select_events` adds a
*total* cap for the whole input (one bucket, i.e. the calibration's IoV): the total is shared equally among
the runs (every run is represented as far as the total allows), a run with fewer events than its share gives
the rest to the other runs, and inside a run the files are read in input order, the first events of each.
The choice is deterministic (no random file choice) and a file is looked at only when its run still needs
events, so the files read grow with the total, not with the bucket.  The per-file cap still applies to every
file.  With events for every run, a bucket of ``n`` runs of one file each with the total set to ``n`` times
the per-file cap reads exactly what the per-file cap alone reads.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

RunKey = TypeVar("RunKey", bound=Hashable)


def select_events(entries: Sequence[tuple[Path, RunKey]], count: Callable[[Path], int], max_events: int = -1,
                  max_events_per_file: int = -1) -> list[tuple[Path, RunKey, int]]:
    """``(file, run, n)`` for every file of ``entries`` (``(file, run)``, in input order) to read: its first ``n``
    events (``n`` > 0), in input order.

    ``count(file)`` gives a file's number of events; it is called at most once per file, and only for files whose
    run still needs events.  ``max_events`` <= 0: no total cap (every file, up to ``max_events_per_file``);
    ``max_events_per_file`` <= 0: no cap per file.  Runs are ordered by first appearance in ``entries``; the
    total is shared equally among them, the first ``max_events % n_runs`` runs getting one event more.
    """
    per_file = int(max_events_per_file)
    counted: dict[int, int] = {}

    def usable(i: int) -> int:
        if i not in counted:
            n = max(0, int(count(Path(entries[i][0]))))
            counted[i] = min(n, per_file) if per_file > 0 else n
        return counted[i]

    runs: dict[RunKey, list[int]] = {}
    for i, (_, run) in enumerate(entries):
        runs.setdefault(run, []).append(i)
    take = [0] * len(entries)
    if max_events <= 0:
        for i in range(len(entries)):
            take[i] = usable(i)
    else:
        remaining = int(max_events)
        active = list(runs)
        while remaining > 0 and active:  # a round fills every share (remaining -> 0) or drops an exhausted run
            share, extra = divmod(remaining, len(active))
            still = []
            for k, run in enumerate(active):
                want = share + (1 if k < extra else 0)
                got = 0
                for i in runs[run]:
                    if got == want:
                        break
                    n = min(usable(i) - take[i], want - got)
                    take[i] += n
                    got += n
                remaining -= got
                if got == want:  # may have more events; a run short of its share has none left
                    still.append(run)
            active = still
    return [(Path(entries[i][0]), entries[i][1], take[i]) for i in range(len(entries)) if take[i] > 0]


__all__ = ["select_events"]
