"""Which chunks the assembly sums with compiled kernels, and with which.

A chunk qualifies when every measurement's global entries lie in one label block.  Narrow chunks (no record
with more than :data:`~b2luca.alignment.local_fit.SMALL_Q` local parameters, every record with fewer block rows
nb·S than the union-batch threshold: the usual Mille files) take :mod:`b2luca.alignment._kernels`; the others
(e.g. the VXD+CDC alignment's tracks through every CDC layer and its common-vertex events) take
:mod:`b2luca.alignment._wide_kernels` (:data:`COMPILED_WIDE`; off: their numpy path with union batches).
numba is imported on the first call only, so importing the alignment package (``b2luca align --help``, the task
graph) does not pay for it."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .local_fit import SMALL_Q
from .mille import MilleRecords

__all__ = ["COMPILED", "COMPILED_WIDE", "CompiledPath", "compiled_path"]

#: take the compiled path where a chunk qualifies (tests switch it off to compare with the numpy path)
COMPILED = True
#: chunks with wide records (more than SMALL_Q local parameters, or nb·S >= k_limit) too, by the kernels of
#: :mod:`b2luca.alignment._wide_kernels` (tests switch it off to compare with the numpy path's union batches)
COMPILED_WIDE = True


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
    global entry; ``k_limit``: block rows nb·S from which a record is wide), its ``kernels`` the narrow or the
    wide module, or None when it does not qualify."""
    if not COMPILED or recs.n_records == 0:
        return None
    many_locals = bool(recs.loc_index.size and int(recs.loc_index.max()) >= SMALL_Q)
    if many_locals and not COMPILED_WIDE:
        return None  # (known without numba)
    from . import _kernels, _wide_kernels  # numba: only when a chunk is assembled

    # (records of many local parameters are tracks through many blocks: the structure kernel for those)
    structure = _wide_kernels.chunk_structure_wide if many_locals else _kernels.chunk_structure
    single, *arrays = structure(recs.rec_ptr, recs.loc_meas, recs.loc_index, recs.glb_meas, gblk)
    if not single:
        return None
    kp = CompiledPath(_kernels, *arrays)
    if many_locals or int(kp.nb.max()) * S >= k_limit:
        if not COMPILED_WIDE:
            return None
        kp.kernels = _wide_kernels
    return kp
