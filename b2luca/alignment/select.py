"""Measurement selection on Mille records: leave out the rows that touch parameters the fit does not determine.

A parameter with fewer than ``entries`` measurements is not fitted (pede's ``entries``): it stays at its current
value.  Its measurements would still pull the tracks through them (a sensor held at its nominal position while
it is really tens of um away), and through the tracks bias every parameter those tracks touch.  Leaving such rows
out of the records is, for the linearised local fit, the same as refitting the tracks without those hits.
"""

from __future__ import annotations

import numpy as np

from .mille import MilleRecords

__all__ = ["drop_rows", "rows_with_labels", "split_records"]


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


def split_records(recs: MilleRecords, bounds: np.ndarray) -> list[MilleRecords]:
    """``recs`` cut into consecutive record ranges ``bounds[i]:bounds[i+1]`` (``bounds``: non-decreasing record
    indices from 0 to ``n_records``); each piece keeps its records and rows in their order, with measurement ids
    renumbered from 0.  Derivative entries keep their order when they are in measurement order (as written or
    decoded: :func:`b2luca.alignment.concat_records` of the pieces then gives ``recs``), else they are put in
    measurement order (stable)."""
    bounds = np.asarray(bounds, np.int64)
    if bounds.ndim != 1 or bounds.size < 1 or bounds[0] != 0 or bounds[-1] != recs.n_records \
            or np.any(np.diff(bounds) < 0):
        raise ValueError(f"split_records: bounds must rise from 0 to {recs.n_records}, got {bounds.tolist()[:8]}...")
    lm, gm = recs.loc_meas, recs.glb_meas
    lo_ord = None if (lm.size < 2 or np.all(lm[1:] >= lm[:-1])) else np.argsort(lm, kind="stable")
    go_ord = None if (gm.size < 2 or np.all(gm[1:] >= gm[:-1])) else np.argsort(gm, kind="stable")
    if lo_ord is not None:
        lm = lm[lo_ord]
    if go_ord is not None:
        gm = gm[go_ord]
    m_at = recs.rec_ptr[bounds]  # first measurement of each piece
    l_at, g_at = np.searchsorted(lm, m_at), np.searchsorted(gm, m_at)
    out = []
    for i in range(bounds.size - 1):
        m0, m1 = int(m_at[i]), int(m_at[i + 1])
        ls = slice(int(l_at[i]), int(l_at[i + 1]))
        gs = slice(int(g_at[i]), int(g_at[i + 1]))
        li = ls if lo_ord is None else lo_ord[ls]
        gi = gs if go_ord is None else go_ord[gs]
        out.append(MilleRecords(rec_ptr=recs.rec_ptr[bounds[i]:bounds[i + 1] + 1] - m0, value=recs.value[m0:m1],
                                sigma=recs.sigma[m0:m1], loc_meas=recs.loc_meas[li] - m0, loc_index=recs.loc_index[li],
                                loc_der=recs.loc_der[li], glb_meas=recs.glb_meas[gi] - m0,
                                glb_label=recs.glb_label[gi], glb_der=recs.glb_der[gi], source=recs.source,
                                first_record=recs.first_record + int(bounds[i]), meas_sorted=recs.meas_sorted))
    return out
