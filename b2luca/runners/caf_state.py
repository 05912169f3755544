"""Reading the CAF's ``calibration_results/caf_state.db`` (SQLite), which b2caf-prompt-run resumes from.

Table ``calibrations(name text primary key, state text, checkpoint text, iteration int)``; states
init, running_collector, collector_failed, collector_completed, running_algorithms, algorithms_failed,
algorithms_completed, completed, failed; checkpoints init, collector_completed, completed.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CAF_STATE_DB", "CafState", "FAILED_STATES", "read_caf_state"]

#: Relative to the working directory of b2caf-prompt-run.
CAF_STATE_DB = Path("calibration_results") / "caf_state.db"
FAILED_STATES = frozenset({"collector_failed", "algorithms_failed", "failed"})


@dataclass(frozen=True)
class CafState:
    """One CAF calibration's row of caf_state.db."""

    name: str
    state: str
    checkpoint: str
    iteration: int

    @property
    def failed(self) -> bool:
        """Whether the CAF gave up on this calibration."""
        return self.state in FAILED_STATES

    @property
    def completed(self) -> bool:
        """Whether the CAF finished this calibration."""
        return self.state == "completed"

    def __str__(self) -> str:
        return f"{self.name}: {self.state} (checkpoint {self.checkpoint}, iteration {self.iteration})"


def read_caf_state(work_dir: Path) -> list[CafState]:
    """The rows of ``<work_dir>/calibration_results/caf_state.db``; empty when there is none yet.

    An unreadable database raises ``sqlite3.Error`` naming nothing; callers add the path.
    """
    path = Path(work_dir) / CAF_STATE_DB
    if not path.is_file():
        return []
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = connection.execute("SELECT name, state, checkpoint, iteration FROM calibrations ORDER BY name")
        return [CafState(str(n), str(s), str(c), int(i or 0)) for n, s, c, i in rows]
    finally:
        connection.close()
