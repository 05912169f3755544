"""The compiled single-block path of the assembly (b2luca/alignment/_kernels.py) against the numpy path:
the same normal equations, χ², cuts and reject counts on records with outliers, down-weighting, a singular
local fit and a record without global entries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from b2luca.alignment import _kernels, _wide_kernels, fast_path
from b2luca.alignment.assemble import Assembler, DownWeighting
from b2luca.alignment.mille import MilleRecords
from b2luca.alignment.toy import barrel_geometry, generate_tracks

DW = DownWeighting(iterations=3, chi2_factor=0.6, hugecut=3.0, dwfractioncut=0.2)


def _records(seed: int, n_tracks: int, n_layers: int = 6) -> MilleRecords:
    """Toy tracks with 1 % of the measurements shifted by 8-40 σ, one record whose local derivatives are all
    zero (singular local fit) and one without global entries."""
    geo = barrel_geometry(30 * n_layers, n_layers=n_layers)
    rng = np.random.default_rng(seed)
    truth = np.tile([5e-4, 5e-4, 5e-4, 3e-6, 3e-6, 3e-6], geo.n_sensors) * rng.normal(size=6 * geo.n_sensors)
    r = generate_tracks(geo, n_tracks, truth, rng)
    out = rng.random(r.n_meas) < 0.01
    r.value[out] += rng.choice([-1, 1], out.sum()) * rng.uniform(8, 40, out.sum()) * r.sigma[out]
    meas_rec = r.meas_record()
    r.loc_der[meas_rec[r.loc_meas] == 3] = 0.0  # record 3: Γ = 0
    keep = meas_rec[r.glb_meas] != 5  # record 5: no global entries
    r.glb_meas, r.glb_label, r.glb_der = r.glb_meas[keep], r.glb_label[keep], r.glb_der[keep]
    return r


def _system(records: list[MilleRecords], compiled: bool, monkeypatch: pytest.MonkeyPatch,
            corrections: tuple[np.ndarray, np.ndarray] | None = None, dw: DownWeighting = DW):
    monkeypatch.setattr(fast_path, "COMPILED", compiled)
    taken = []
    real = fast_path.compiled_path

    def spy(*a, **k):
        kp = real(*a, **k)
        taken.append(kp is not None)
        return kp

    monkeypatch.setattr("b2luca.alignment.assemble.compiled_path", spy)
    asm = Assembler(corrections=corrections, downweight=dw)
    for recs in records:
        asm.add(recs)
    assert all(taken) if compiled else not any(taken)
    return asm.finish()


def _assert_same(a, b, rel: float = 1e-11, chi2_rel: float = 1e-9) -> None:
    assert np.array_equal(a.labels, b.labels)
    assert a.rejected == b.rejected and a.n_used == b.n_used and a.n_meas == b.n_meas and a.ndf == b.ndf
    assert np.array_equal(a.entries, b.entries)
    assert abs(a.C - b.C).max() <= rel * abs(b.C).max()
    assert np.allclose(a.b, b.b, rtol=0, atol=10 * rel * abs(b.b).max())
    assert a.chi2_0 == pytest.approx(b.chi2_0, rel=chi2_rel)  # yᵀWy − |L⁻¹β|²: round-off of the cancellation
    assert a.dw_sum == pytest.approx(b.dw_sum, rel=1e-11) and a.dw_n == b.dw_n


def test_compiled_path_gives_the_numpy_system(monkeypatch):
    records = [_records(1, 500), _records(2, 300)]
    ref = _system(records, False, monkeypatch)
    # every cut is exercised, so the comparison covers each of them
    assert {"singular", "no_globals", "hugecut", "chiscut", "dwfraction"} <= set(ref.rejected), ref.rejected
    new = _system(records, True, monkeypatch)
    _assert_same(new, ref)
    # with corrections (a later iteration's residuals) and without down-weighting
    rng = np.random.default_rng(3)
    corr = (ref.labels, 0.01 * rng.normal(size=ref.labels.size))
    _assert_same(_system(records, True, monkeypatch, corr, DownWeighting()),
                 _system(records, False, monkeypatch, corr, DownWeighting()))


def test_chunk_without_global_entries(monkeypatch):
    r = _records(6, 40)
    g = _records(7, 40)
    r.glb_meas, r.glb_label, r.glb_der = r.glb_meas[:0], r.glb_label[:0], r.glb_der[:0]
    ref = _system([g, r], False, monkeypatch)
    assert ref.rejected["no_globals"] >= r.n_records
    _assert_same(_system([g, r], True, monkeypatch), ref)


def test_comparison_fails_when_the_kernel_drops_a_record(monkeypatch):
    """The check above can fail: one accepted record left out of the sums changes the matrix."""
    records = [_records(4, 200)]
    ref = _system(records, False, monkeypatch)
    real = _kernels.accumulate

    def drop_one(order, accept, *rest):
        accept = accept.copy()
        accept[np.flatnonzero(accept)[7]] = False
        real(order, accept, *rest)

    monkeypatch.setattr(_kernels, "accumulate", drop_one)
    new = _system(records, True, monkeypatch)
    assert abs(new.C - ref.C).max() > 1e-6 * abs(ref.C).max()


def test_wide_or_many_local_records_take_the_wide_kernels(monkeypatch):
    r = _records(5, 50)
    monkeypatch.setattr(fast_path, "COMPILED", True)
    asm = Assembler()
    asm.add(r)  # fixes the stride and registers the labels
    lidx = asm.index(r)
    gblk = asm.registry.label_block[lidx]
    S = asm.registry.stride
    assert fast_path.compiled_path(r, gblk, S, 1 << 20).kernels is _kernels
    assert fast_path.compiled_path(r, gblk, S, 6).kernels is _wide_kernels  # a record of one block is "wide"
    r.loc_index = r.loc_index.copy()
    r.loc_index[0] = fast_path.SMALL_Q  # one record with SMALL_Q + 1 local parameters
    assert fast_path.compiled_path(r, gblk, S, 1 << 20).kernels is _wide_kernels
    monkeypatch.setattr(fast_path, "COMPILED_WIDE", False)  # the numpy path (union batches) for both
    assert fast_path.compiled_path(r, gblk, S, 1 << 20) is None
    r.loc_index[0] = 0
    assert fast_path.compiled_path(r, gblk, S, 6) is None


def _wide_records(seed: int, n_tracks: int, n_layers: int = 6) -> MilleRecords:
    """:func:`_records` with the wide records' features: a further local parameter on each of the first
    5 measurements of every record of 12 (as kinks: q > SMALL_Q, with repeated local indices within one measurement) and
    the 6th parameter of every sensor never measured (blocks that the labels do not fill)."""
    r = _records(seed, n_tracks, n_layers)
    rng = np.random.default_rng(seed + 100)
    meas_rec = r.meas_record()
    long = np.diff(r.rec_ptr)[meas_rec] >= 12  # (shorter records would be left without enough measurements)
    m = np.flatnonzero(long & (np.arange(r.n_meas) - r.rec_ptr[meas_rec] < 5))  # their first 5 measurements
    q0 = int(r.loc_index.max()) + 1
    extra = (q0 + m - r.rec_ptr[meas_rec[m]]).astype(r.loc_index.dtype)  # extra parameters q0 .. q0 + 4
    twice = m[::3]  # and a repeated index: two entries of one local parameter in one measurement
    lm = np.concatenate([r.loc_meas, m, twice])
    li = np.concatenate([r.loc_index, extra, extra[::3]])
    ld = np.concatenate([r.loc_der, rng.normal(size=m.size), rng.normal(size=twice.size)])
    o = np.argsort(lm, kind="stable")
    r.loc_meas, r.loc_index, r.loc_der = lm[o], li[o], ld[o]
    keep = r.glb_label % 10 != 6
    r.glb_meas, r.glb_label, r.glb_der = r.glb_meas[keep], r.glb_label[keep], r.glb_der[keep]
    return r


def _spy_kernels(monkeypatch: pytest.MonkeyPatch) -> list:
    """The kernel modules that fast_path.compiled_path hands out from now on (None: the numpy path)."""
    taken: list = []
    real = fast_path.compiled_path

    def spy(*a):
        kp = real(*a)
        taken.append(None if kp is None else kp.kernels)
        return kp

    monkeypatch.setattr(fast_path, "compiled_path", spy)
    return taken


def _max_used_rows(r: MilleRecords) -> int:
    """The most labels (used block rows) of one record."""
    mr = r.meas_record()[r.glb_meas]
    return max(np.unique(r.glb_label[mr == i]).size for i in range(r.n_records))


def _exact_system(records: list[MilleRecords], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
    """C, b, χ² and the number of records used, without cuts, by a complete QR of each record's weighted local
    derivatives: its last columns Q₂ span the residual space, Z = Q₂ᵀ W^½ D and e = Q₂ᵀ W^½ y add Zᵀ Z, Zᵀ e
    and |e|² (no cancellation; records without global entries or with a singular local fit skipped)."""
    n = labels.size
    C, b, chi2, used = np.zeros((n, n)), np.zeros(n), 0.0, 0
    for r in records:
        for i in range(r.n_records):
            m0, m1 = r.rec_ptr[i], r.rec_ptr[i + 1]
            le = (r.loc_meas >= m0) & (r.loc_meas < m1)
            ge = (r.glb_meas >= m0) & (r.glb_meas < m1)
            if not ge.any():
                continue
            q = int(r.loc_index[le].max()) + 1
            sw = 1.0 / r.sigma[m0:m1]
            A = np.zeros((m1 - m0, q))
            np.add.at(A, (r.loc_meas[le] - m0, r.loc_index[le]), r.loc_der[le])
            D = np.zeros((m1 - m0, n))
            np.add.at(D, (r.glb_meas[ge] - m0, np.searchsorted(labels, r.glb_label[ge])), r.glb_der[ge])
            Q, R = np.linalg.qr(A * sw[:, None], mode="complete")
            diag = abs(np.diag(R))
            if diag.min() <= 1e-10 * diag.max():
                continue
            Z, e = Q[:, q:].T @ (D * sw[:, None]), Q[:, q:].T @ (r.value[m0:m1] * sw)
            C += Z.T @ Z
            b += Z.T @ e
            chi2 += float(e @ e)
            used += 1
    return C, b, chi2, used


@pytest.mark.parametrize("n_layers", [6, 22])
def test_wide_kernels_give_the_exact_system(monkeypatch, n_layers):
    """Every record wide, no cuts: the wide kernels' C and b within ~1e-11 of an exact (QR) reference; with
    22 layers a record has >= 100 used block rows, so F = M Mᵀ takes 3 panels of PANEL_ROWS."""
    monkeypatch.setattr("b2luca.alignment.assemble.UNION_MIN_K", 6)
    records = [_wide_records(8, 300, n_layers), _wide_records(9, 200, n_layers)]
    if n_layers > 6:
        assert _max_used_rows(records[0]) >= 2 * _wide_kernels.PANEL_ROWS + 4
    taken = _spy_kernels(monkeypatch)
    new = _system(records, True, monkeypatch, dw=DownWeighting())
    assert taken and all(k is _wide_kernels for k in taken)
    assert np.all(np.diff(new.labels) > 0)
    C, b, chi2, used = _exact_system(records, new.labels)
    assert new.n_used == used and new.rejected["singular"] == 2 and new.rejected["no_globals"] == 2
    assert abs(new.C.toarray() - C).max() <= 2e-11 * abs(C).max()  # (measured 6e-12; the numpy path: 3.5e-10)
    assert abs(new.b - b).max() <= 2e-11 * abs(b).max()
    # χ² = yᵀWy − |L⁻¹β|² (both paths' formula) cancels for records with 8-40 σ outliers: ~2e-10 relative
    assert new.chi2_0 == pytest.approx(chi2, rel=2e-9)


def test_wide_kernels_give_the_exact_system_of_vertex_events(monkeypatch):
    """Events of 1-5 tracks with a common vertex (:func:`b2luca.alignment.vertex.event_vertex_records`: the tracks'
    local parameters one after the other, the vertex last), which the wide kernel sums track group by track group
    (the tracks' columns of M are nonzero in their own blocks only): C and b within ~1e-11 of the exact (QR)
    reference, as for single tracks."""
    from b2luca.alignment.vertex import event_vertex_records

    monkeypatch.setattr("b2luca.alignment.assemble.UNION_MIN_K", 6)
    rng = np.random.default_rng(11)
    records = []
    several = 0
    for seed, n_tracks in ((8, 240), (9, 160)):
        r = _wide_records(seed, n_tracks, 6)
        n = r.n_records
        event = np.repeat(np.arange(n), rng.integers(1, 6, n))[:n]  # 1-5 tracks per event, in event order
        several += int((np.bincount(event) >= 2).sum())
        q = np.zeros(r.n_records, np.int64)
        np.maximum.at(q, r.meas_record()[r.loc_meas], r.loc_index.astype(np.int64) + 1)
        q = np.maximum(q, 2)  # (the singular record: no local derivatives, but d0 and phi0 for the vertex rows)
        records.append(event_vertex_records(r, event, rng.normal(0, 0.01, n), rng.uniform(-3, 3, n), q,
                                            (0.0, 0.0), (0.01, 0.001), (9_000_001, 9_000_002)))
    assert several > 50  # events of several tracks: several groups of local parameters
    taken = _spy_kernels(monkeypatch)
    new = _system(records, True, monkeypatch, dw=DownWeighting())
    assert taken and all(k is _wide_kernels for k in taken)
    C, b, chi2, used = _exact_system(records, new.labels)
    assert new.n_used == used
    assert abs(new.C.toarray() - C).max() <= 2e-11 * abs(C).max()
    assert abs(new.b - b).max() <= 2e-11 * abs(b).max()


@pytest.mark.parametrize(("min_k", "n_layers"), [(6, 6), (1 << 20, 6), (6, 22)])
def test_wide_kernels_give_the_numpy_system(monkeypatch, min_k, n_layers):
    """Records of many local parameters and of many blocks (every record wide with ``min_k`` 6; with 22
    layers F = M Mᵀ by 3 panels), blocks not filled by their labels: the wide kernels give the numpy path's
    system (union batches), cuts and down-weighting included."""
    monkeypatch.setattr("b2luca.alignment.assemble.UNION_MIN_K", min_k)
    records = [_wide_records(8, 300, n_layers), _wide_records(9, 200, n_layers)]
    assert int(records[0].loc_index.max()) >= fast_path.SMALL_Q
    ref = _system(records, False, monkeypatch, dw=DW)
    # (the 6-layer records: hugecut and dwfraction; the 22-layer ones, of larger ndf: chiscut)
    cuts = {"singular", "no_globals"} | ({"hugecut", "dwfraction"} if n_layers == 6 else {"chiscut"})
    assert cuts <= {k for k, v in ref.rejected.items() if v} and ref.dw_sum > 0, ref.rejected
    assert ref.n_used > 100
    taken = _spy_kernels(monkeypatch)
    new = _system(records, True, monkeypatch, dw=DW)
    assert taken and all(k is _wide_kernels for k in taken)
    # (the tolerances are the numpy path's round-off: its D − M Mᵀ of the union batches cancels to ~3.5e-10 of
    # C's scale, its χ² to ~4e-7; the wide kernels are ~6e-12 from the exact system, see the test above)
    _assert_same(new, ref, rel=2e-9, chi2_rel=2e-6)
    rng = np.random.default_rng(3)
    corr = (ref.labels, 0.01 * rng.normal(size=ref.labels.size))
    _assert_same(_system(records, True, monkeypatch, corr, DownWeighting()),
                 _system(records, False, monkeypatch, corr, DownWeighting()), rel=2e-9, chi2_rel=2e-6)


def _vertex_events(seed: int, n_tracks: int, n_layers: int, rng: np.random.Generator) -> MilleRecords:
    """:func:`_wide_records` grouped into events of 1-5 tracks with a common vertex."""
    from b2luca.alignment.vertex import event_vertex_records

    r = _wide_records(seed, n_tracks, n_layers)
    n = r.n_records
    event = np.repeat(np.arange(n), rng.integers(1, 6, n))[:n]
    q = np.zeros(n, np.int64)
    np.maximum.at(q, r.meas_record()[r.loc_meas], r.loc_index.astype(np.int64) + 1)
    return event_vertex_records(r, event, rng.normal(0, 0.01, n), rng.uniform(-3, 3, n), np.maximum(q, 2),
                                (0.0, 0.0), (0.01, 0.001), (9_000_001, 9_000_002))


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize(("events", "n_layers"), [(False, 6), (False, 22), (True, 6)])
def test_both_forms_of_the_wide_kernel_give_the_exact_system(monkeypatch, mode, events, n_layers):
    """The wide kernel's two forms of a record's sums, each forced on every record (``accumulate`` takes the
    cheaper one per record): the block-row form (1: M = H L⁻ᵀ, F = M Mᵀ over the used block rows) and the
    measurement-space form (2: Z = A L⁻ᵀ, F = Dᵀ W Z Zᵀ W D), on single tracks and on vertex events (several
    tracks per record), each within ~1e-11 of the exact (QR) system; with 22 layers the measurement-space
    products take several panels."""
    monkeypatch.setattr("b2luca.alignment.assemble.UNION_MIN_K", 6)
    rng = np.random.default_rng(11)
    records = ([_vertex_events(8, 240, n_layers, rng), _vertex_events(9, 160, n_layers, rng)] if events else
               [_wide_records(8, 300, n_layers), _wide_records(9, 200, n_layers)])
    calls = []

    def forced(*args):
        calls.append(args[1].sum())
        _wide_kernels.accumulate_mode(*args, mode)

    monkeypatch.setattr(_wide_kernels, "accumulate", forced)
    new = _system(records, True, monkeypatch, dw=DownWeighting())
    assert len(calls) == 2 and min(calls) > 20
    C, b, chi2, used = _exact_system(records, new.labels)
    assert new.n_used == used
    assert abs(new.C.toarray() - C).max() <= 2e-11 * abs(C).max()
    assert abs(new.b - b).max() <= 2e-11 * abs(b).max()


def test_the_cost_model_takes_both_forms():
    """``accumulate`` (mode 0) takes the measurement space for a record of few measurements with few global
    entries against many used block rows, the block-row form for many measurements with many entries each, and
    always the block-row form above MEAS_SPACE_MAX_Q local parameters."""
    cheaper = _wide_kernels._meas_space_cheaper
    glb_ptr = np.arange(0, 3 * 101, 3, dtype=np.int64)  # 100 measurements of 3 global entries
    assert cheaper(0, 100, glb_ptr, 37, 300)  # K = 300 used rows: the K² q products cost more
    assert not cheaper(0, 100, glb_ptr, 37, 60)  # K = 60: the scatter of (Σ|g|)² products costs more
    assert not cheaper(0, 100, glb_ptr, _wide_kernels.MEAS_SPACE_MAX_Q + 1, 300)


def test_wide_comparison_fails_when_the_kernel_drops_a_record(monkeypatch):
    """The comparison above can fail: one accepted record left out of the wide kernel's sums."""
    monkeypatch.setattr("b2luca.alignment.assemble.UNION_MIN_K", 6)
    records = [_wide_records(10, 150)]
    ref = _system(records, False, monkeypatch)
    real = _wide_kernels.accumulate

    def drop_one(order, accept, *rest):
        accept = accept.copy()
        accept[np.flatnonzero(accept)[7]] = False
        real(order, accept, *rest)

    monkeypatch.setattr(_wide_kernels, "accumulate", drop_one)
    new = _system(records, True, monkeypatch)
    assert abs(new.C - ref.C).max() > 1e-6 * abs(ref.C).max()


def test_numba_is_imported_only_by_the_assembly_of_a_qualifying_chunk():
    code = """
import sys
import numpy as np
import b2luca.alignment, b2luca.alignment.cli, b2luca.alignment.problem
from b2luca.alignment.assemble import Assembler
from b2luca.alignment.mille import MilleRecords
print("numba" in sys.modules)
i8 = lambda *v: np.array(v, np.int64)
# one record, 9 local parameters (as a common-vertex record), compiled wide path off: decided without numba
import b2luca.alignment.fast_path as fp
fp.COMPILED_WIDE = False
recs = MilleRecords(rec_ptr=i8(0, 9), value=np.zeros(9), sigma=np.ones(9), loc_meas=i8(*range(9)),
                    loc_index=np.arange(9, dtype=np.int32), loc_der=np.ones(9), glb_meas=i8(*range(9)),
                    glb_label=i8(*range(1, 10)), glb_der=np.ones(9))
Assembler().add(recs)
print("numba" in sys.modules)
recs.loc_index[:] = 0
Assembler().add(recs)
print("numba" in sys.modules)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["False", "False", "True"]


def test_pair_table_gives_the_sorted_keys():
    """pair_index (a table of all block pairs) = pair_keys + _unique_inverse (a sort), rejected records skipped."""
    from b2luca.alignment.assemble import _unique_inverse
    from b2luca.alignment.global_system import NBIG

    rng = np.random.default_rng(12)
    nb = rng.integers(0, 9, 300)
    ublk = np.concatenate([np.sort(rng.choice(40, k, replace=False)) for k in nb]).astype(np.int64)
    ustart = np.r_[0, np.cumsum(nb)].astype(np.int64)
    accept = rng.random(300) < 0.8
    keys, off = _wide_kernels.pair_keys(accept, nb, ustart, ublk, int(NBIG))
    uk, kinv = _unique_inverse(keys)
    tk, tinv, toff = _wide_kernels.pair_index(accept, nb, ustart, ublk, 40, int(NBIG))
    assert np.array_equal(tk, uk) and np.array_equal(tinv, kinv) and np.array_equal(toff, off)
    assert uk.size < keys.size  # repeated pairs were merged


def test_wide_structure_kernel_gives_the_narrow_ones_structure():
    """chunk_structure_wide = chunk_structure (blocks per record ascending, ranks, q), and both find a measurement
    whose entries lie in two blocks."""
    r = Assembler.prepare(_wide_records(13, 200))
    gblk = (r.glb_label // 10).astype(np.int64) % 97  # a block per sensor (the labels of sensor s: 10 s + k)
    args = (r.rec_ptr, r.loc_meas, r.loc_index, r.glb_meas, gblk)
    narrow, wide = _kernels.chunk_structure(*args), _wide_kernels.chunk_structure_wide(*args)
    assert narrow[0] and wide[0]
    for a, b in zip(narrow[1:], wide[1:]):
        assert np.array_equal(a, b)
    two = gblk.copy()
    m = int(np.flatnonzero(np.bincount(r.glb_meas) >= 2)[0])
    two[np.flatnonzero(r.glb_meas == m)[0]] += 1
    two_args = (r.rec_ptr, r.loc_meas, r.loc_index, r.glb_meas, two)
    assert not _kernels.chunk_structure(*two_args)[0] and not _wide_kernels.chunk_structure_wide(*two_args)[0]
