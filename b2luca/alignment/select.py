"""Measurement selection on Mille records: leave out the rows that touch parameters the fit does not determine.

A parameter with fewer than ``entries`` measurements is not fitted (pede's ``entries``): it stays at its current
value.  Its measurements would still pull the tracks through them (a sensor held at its nominal position while
it is really tens of um away), and through the tracks bias every parameter those tracks touch.  Leaving such rows
out of the records is, for the linearised local fit, the same as refitting the tracks without those hits.
"""

from __future__ import annotations

import numpy as np

from .mille import MilleRecords

__all__ = ["drop_rows", "rows_with_labels"]


def rows_with_labels(recs: MilleRecords, labels: np.ndarray) -> np.ndarray:
    """(n_meas,) bool: the measurement has a global derivative w.r.t. one of ``labels``."""
    hit = np.isin(recs.glb_label, np.asarray(labels, np.int64))
    out = np.zeros(recs.n_meas, bool)
    out[recs.glb_meas[hit]] = True
    return out


def drop_rows(recs: MilleRecords, drop: np.ndarray) -> MilleRecords:
    """``recs`` without the measurements ``drop`` ((n_meas,) bool); records keep their order (a record may end
    with fewer rows than local parameters: the assembly rejects it as singular)."""
    drop = np.asarray(drop, bool)
    if drop.shape != (recs.n_meas,):
        raise ValueError(f"drop_rows: mask of shape {drop.shape} for {recs.n_meas} measurements")
    if not drop.any():
        return recs
    keep = ~drop
    new_id = np.cumsum(keep) - 1
    kept_per_rec = np.add.reduceat(keep.astype(np.int64), recs.rec_ptr[:-1]) if recs.n_meas else \
        np.zeros(recs.n_records, np.int64)
    kept_per_rec[np.diff(recs.rec_ptr) == 0] = 0  # reduceat gives the next element for empty records
    lk, gk = keep[recs.loc_meas], keep[recs.glb_meas]
    return MilleRecords(rec_ptr=np.r_[0, np.cumsum(kept_per_rec)].astype(np.int64), value=recs.value[keep],
                        sigma=recs.sigma[keep], loc_meas=new_id[recs.loc_meas[lk]], loc_index=recs.loc_index[lk],
                        loc_der=recs.loc_der[lk], glb_meas=new_id[recs.glb_meas[gk]], glb_label=recs.glb_label[gk],
                        glb_der=recs.glb_der[gk], source=recs.source, first_record=recs.first_record,
                        meas_sorted=recs.meas_sorted, n_nonfinite=recs.n_nonfinite)
