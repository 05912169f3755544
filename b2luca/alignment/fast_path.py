"""Which chunks the assembly sums with the compiled kernels of :mod:`b2luca.alignment._kernels`.

A chunk qualifies when every measurement's global entries lie in one label block, no record has more than
:data:`~b2luca.alignment.local_fit.SMALL_Q` local parameters and every record has fewer block rows (nb·S) than
the union-batch threshold (wide records keep their numpy path). numba is imported on the first call only,
so importing the alignment package (``b2luca align --help``, the task graph) does not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .local_fit import SMALL_Q
from .mille import MilleRecords

__all__ = ["COMPILED", "CompiledPath", "compiled_path"]

#: take the compiled path where a chunk qualifies (tests switch it off to compare with the numpy path)
COMPILED = True


@dataclass
class CompiledPath:
    """The kernels and the record-block structure of one qualifying chunk (see ``_kernels.chunk_structure``)."""

    kernels: ModuleType
    loc_ptr: np.ndarray  # local entries of measurement m: loc_ptr[m]..loc_ptr[m+1]
    glb_ptr: np.ndarray  # global entries likewise
    q: np.ndarray  # local parameters per record
    nb: np.ndarray  # label blocks per record
    ustart: np.ndarray  # record r's blocks, ascending: ublk[ustart[r]:ustart[r + 1]]
    ublk: np.ndarray
    mrank: np.ndarray  # per measurement: its block's rank in the record (−1: no global entries)


def compiled_path(recs: MilleRecords, gblk: np.ndarray, S: int, k_limit: int) -> CompiledPath | None:
    """The compiled path for this prepared chunk (entries sorted by measurement; ``gblk``: label block of every
    global entry; ``k_limit``: block rows nb·S from which a record is wide), or None when it does not
    qualify."""
    if not COMPILED or recs.n_records == 0 or (recs.loc_index.size and int(recs.loc_index.max()) >= SMALL_Q):
        return None  # (a record of more local parameters: known without numba, e.g. the demo's vertex records)
    from . import _kernels  # numba: only when a chunk is assembled

    single, *arrays = _kernels.chunk_structure(recs.rec_ptr, recs.loc_meas, recs.loc_index, recs.glb_meas, gblk)
    kp = CompiledPath(_kernels, *arrays)
    if not single or int(kp.nb.max()) * S >= k_limit:
        return None
    return kp
