"""Common-vertex records: the tracks of one collision event in one Mille record, tied to the beam spot.

Tracks of one event come from one vertex.  The vertex is smeared around the beam spot by the beam size
(about 10 um in x), and that smearing is the same for every track of the event.  A beam-spot row per track
(each track alone constrained to the beam spot with the beam size as its error) counts this common smearing
once per track, as if it were independent: an event with N tracks claims N independent measurements of a
quantity it measures once.  The global fit then trusts the beam-spot constraint too much (alignment errors
slightly too small; on the small test buckets the effect is small next to the statistical errors).

Millepede practice (Belle II, CMS) is a vertex constraint: all tracks of the event go into one record, the
vertex position is a local parameter of that record, and the beam spot measures the vertex once.  Here, with
``u`` = the transverse vertex position minus the current beam-spot position (two extra local parameters):

* per track, ``d0 - ((b_x + u_x) sin phi0 - (b_y + u_y) cos phi0) = 0`` (the track passes through the vertex;
  error :data:`VERTEX_ROW_SIGMA`, no global derivative);
* once per event, ``u_x - db_x = 0 +- sigma_x`` and ``u_y - db_y = 0 +- sigma_y``: the vertex lies in the beam
  spot, whose position corrections ``db`` are global parameters.

For an event with one track this is the same measurement as the single beam-spot row with error
``hypot(sigma_x sin phi0, sigma_y cos phi0)``.
"""

from __future__ import annotations

import numpy as np

from .mille import MilleRecords

__all__ = ["VERTEX_ROW_SIGMA", "event_vertex_records"]

#: error of the "track passes through the vertex" row [mm]: far below every other error (an exact
#: constraint); large enough to keep the local fit well conditioned
VERTEX_ROW_SIGMA = 1e-5


def event_vertex_records(recs: MilleRecords, event: np.ndarray, d0: np.ndarray, phi0: np.ndarray,
                         n_local: np.ndarray, position: tuple[float, float], size: tuple[float, float],
                         labels: tuple[int, int]) -> MilleRecords:
    """One record per event from ``recs`` (one record per track, its local parameters 0..n_local-1 with d0
    and phi0 the local parameters 0 and 1, no beam-spot rows): the tracks' records one after the other (local
    indices shifted), then a vertex row per track and the two beam-spot rows (module docstring).

    ``event`` (T,) event id of every record; ``d0``/``phi0`` (T,) the fitted perigee of each track; ``n_local``
    (T,) its number of local parameters; ``position``/``size``/``labels``: the beam spot's current (x, y)
    [mm], its size (sigma x, sigma y) [mm] and the global labels of its position corrections."""
    event = np.asarray(event)
    nt = recs.n_records
    if not (event.shape == d0.shape == phi0.shape == n_local.shape == (nt,)):
        raise ValueError(f"event_vertex_records: {nt} records but arrays of shapes {event.shape}, {d0.shape}, "
                         f"{phi0.shape}, {n_local.shape}")
    if nt == 0:
        return recs
    order = np.argsort(event, kind="stable")  # tracks of one event together, in their original order
    ev_sorted = event[order]
    start = np.flatnonzero(np.r_[True, ev_sorted[1:] != ev_sorted[:-1]])  # first track of each event
    ne = start.size
    ev_of = np.repeat(np.arange(ne), np.diff(np.r_[start, nt]))  # event rank of each sorted track
    nl = np.asarray(n_local, np.int64)[order]
    first_in_event = np.repeat(start, np.diff(np.r_[start, nt]))
    csum = np.cumsum(nl) - nl  # local offset of each sorted track within the whole list
    loc_off = csum - csum[first_in_event]  # ... within its event
    n_loc_event = np.add.reduceat(nl, start)  # local parameters of the tracks of each event
    # rows: the tracks' measurements (in sorted order), then per event: one vertex row per track, two beam rows
    counts = np.diff(recs.rec_ptr)[order]
    meas_rec = recs.meas_record()
    rank = np.empty(nt, np.int64)
    rank[order] = np.arange(nt)
    m_rank = rank[meas_rec]  # sorted position of each measurement's track
    # new position of every old measurement row: sort by (event, section 0, sorted track, row)
    n_old = recs.n_meas
    n_rows_event = np.add.reduceat(counts, start) + np.diff(np.r_[start, nt]) + 2
    ev_ptr = np.r_[0, np.cumsum(n_rows_event)]
    within_track = np.arange(n_old) - recs.rec_ptr[meas_rec]
    rows_before_track = np.cumsum(counts) - counts  # rows of earlier sorted tracks
    old_new = (ev_ptr[ev_of[m_rank]] + rows_before_track[m_rank] - rows_before_track[first_in_event[m_rank]]
               + within_track)
    n_new = int(ev_ptr[-1])
    tracks_rows_event = np.add.reduceat(counts, start)
    vtx_new = ev_ptr[ev_of] + tracks_rows_event[ev_of] + (np.arange(nt) - first_in_event)  # (T,) sorted
    beam_new = ev_ptr[:-1] + tracks_rows_event + np.diff(np.r_[start, nt])  # (E,) x row; y row = +1
    value = np.zeros(n_new)
    sigma = np.zeros(n_new)
    value[old_new] = recs.value
    sigma[old_new] = recs.sigma
    bx, by = float(position[0]), float(position[1])
    d0s, ph = np.asarray(d0, float)[order], np.asarray(phi0, float)[order]
    s, c = np.sin(ph), np.cos(ph)
    value[vtx_new] = -(d0s - (bx * s - by * c))  # measured 0 minus the prediction at u = 0
    sigma[vtx_new] = VERTEX_ROW_SIGMA
    sigma[beam_new] = float(size[0])
    sigma[beam_new + 1] = float(size[1])
    u_cols = n_loc_event  # (E,) local index of u_x; u_y = +1
    loc_meas = np.concatenate([old_new[recs.loc_meas], np.repeat(vtx_new, 4), beam_new, beam_new + 1])
    loc_index = np.concatenate([
        recs.loc_index + loc_off[m_rank[recs.loc_meas]],
        np.stack([loc_off, loc_off + 1, u_cols[ev_of], u_cols[ev_of] + 1], 1).ravel(),
        u_cols, u_cols + 1]).astype(np.int32)
    loc_der = np.concatenate([recs.loc_der, np.stack([np.ones(nt), -(bx * c + by * s), -s, c], 1).ravel(),
                              np.ones(ne), np.ones(ne)])
    glb_meas = np.concatenate([old_new[recs.glb_meas], beam_new, beam_new + 1])
    glb_label = np.concatenate([recs.glb_label, np.full(ne, labels[0], np.int64), np.full(ne, labels[1], np.int64)])
    glb_der = np.concatenate([recs.glb_der, -np.ones(ne), -np.ones(ne)])
    lo, go = np.argsort(loc_meas, kind="stable"), np.argsort(glb_meas, kind="stable")
    return MilleRecords(rec_ptr=ev_ptr.astype(np.int64), value=value, sigma=sigma, loc_meas=loc_meas[lo],
                        loc_index=loc_index[lo], loc_der=loc_der[lo], glb_meas=glb_meas[go],
                        glb_label=glb_label[go], glb_der=glb_der[go], source=recs.source, meas_sorted=True)
