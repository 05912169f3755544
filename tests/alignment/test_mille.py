"""Mille binary I/O: variants read identically, round trips, corruption is reported with file + record."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from b2luca.alignment import MilleError, iter_mille, read_mille, records_from_dense, write_mille
from b2luca.alignment.toy import barrel_geometry, generate_tracks


@pytest.fixture(scope="module")
def recs():
    geo = barrel_geometry(120, n_layers=4)
    rng = np.random.default_rng(1)
    r = generate_tracks(geo, 3000, np.zeros(6 * geo.n_sensors), rng)
    # round to float32 so that float32 and float64 files hold the same numbers
    for name in ("value", "sigma", "loc_der", "glb_der"):
        setattr(r, name, getattr(r, name).astype(np.float32).astype(np.float64))
    return r


def _same(a, b):
    for name in ("rec_ptr", "value", "sigma", "loc_meas", "loc_index", "loc_der", "glb_meas", "glb_label",
                 "glb_der"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_variants_round_trip(tmp_path, recs, fortran, double, gz):
    p = tmp_path / ("d.bin.gz" if gz else "d.bin")
    write_mille(p, recs, fortran=fortran, double=double)
    if gz:
        assert p.read_bytes()[:2] == b"\x1f\x8b"
    back = read_mille(p)  # framing detected automatically
    _same(back, recs)
    back2 = read_mille(p, fortran=fortran)
    _same(back2, recs)


def test_chunked_reading_identical(tmp_path, recs):
    p = tmp_path / "d.bin"
    write_mille(p, recs)
    parts = list(iter_mille(p, chunk_bytes=4096))
    assert len(parts) > 10
    assert sum(c.n_records for c in parts) == recs.n_records
    assert parts[3].first_record == sum(c.n_records for c in parts[:3])
    from b2luca.alignment import concat_records

    _same(concat_records(parts), recs)


def test_c_file_layout_matches_mille_cc(tmp_path):
    """One record written by hand the way Mille.cc does it is read back correctly."""
    # header; m=0.5 (locals 1: 1.0, 3: 2.0) sigma 0.1 (globals 11: 3.0, 12: -1.0);
    # m=0.0 (local 2: 0.25) sigma 0.2 (global 13: 4.0)
    f = np.array([0.0, 0.5, 1.0, 2.0, 0.1, 3.0, -1.0, 0.0, 0.25, 0.2, 4.0], np.float32)
    i = np.array([0, 0, 1, 3, 0, 11, 12, 0, 2, 0, 13], np.int32)
    raw = np.array([2 * f.size], np.int32).tobytes() + f.tobytes() + i.tobytes()
    p = tmp_path / "one.bin"
    p.write_bytes(raw * 2)
    r = read_mille(p)
    assert r.n_records == 2
    assert np.allclose(r.value, [0.5, 0.0, 0.5, 0.0])
    assert np.allclose(r.sigma, [0.1, 0.2, 0.1, 0.2])
    assert list(r.loc_index[:3]) == [0, 2, 1] and np.allclose(r.loc_der[:3], [1.0, 2.0, 0.25])
    assert list(r.glb_label[:3]) == [11, 12, 13] and np.allclose(r.glb_der[:3], [3.0, -1.0, 4.0])
    assert list(r.glb_meas[:3]) == [0, 0, 1]


def test_special_block_is_skipped(tmp_path):
    recs = records_from_dense(np.array([1.5]), np.array([0.1]), np.array([[1.0, 2.0]]),
                              np.array([[7, 0]]), np.array([[0.5, 0.0]]), np.array([0, 1]))
    base = tmp_path / "plain.bin"
    write_mille(base, recs)
    w = np.frombuffer(base.read_bytes(), np.int32)
    n = w[0] // 2
    f = w[1:1 + n].view(np.float32)
    i = w[1 + n:]
    # insert a special block (0,0), (-2,0), (9,1), (8,2) after the header pair
    sf = np.array([0.0, -2.0, 9.0, 8.0], np.float32)
    si = np.array([0, 0, 1, 2], np.int32)
    f2 = np.concatenate([f[:1], sf, f[1:]])
    i2 = np.concatenate([i[:1], si, i[1:]])
    p = tmp_path / "special.bin"
    p.write_bytes(np.array([2 * f2.size], np.int32).tobytes() + f2.tobytes() + i2.tobytes())
    _same(read_mille(p), read_mille(base))


def test_truncated_file_names_file_and_record(tmp_path, recs):
    p = tmp_path / "d.bin"
    write_mille(p, recs)
    data = p.read_bytes()
    bad = tmp_path / "trunc.bin"
    bad.write_bytes(data[: len(data) - 10])
    with pytest.raises(MilleError, match=rf"trunc\.bin.*record {recs.n_records}\b"):
        read_mille(bad)
    gzbad = tmp_path / "trunc.bin.gz"
    gzbad.write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(MilleError, match=rf"trunc\.bin\.gz.*record {recs.n_records}\b"):
        read_mille(gzbad)


def test_corrupt_record_names_record(tmp_path, recs):
    p = tmp_path / "d.bin"
    write_mille(p, recs)
    w = np.frombuffer(p.read_bytes(), np.int32).copy()
    # walk to record 6 (0-based 5) and break its length word
    pos = 0
    for _ in range(5):
        pos += 1 + (w[pos] // 2) * 2
    w[pos] = 7  # odd word count
    bad = tmp_path / "corrupt.bin"
    bad.write_bytes(w.tobytes())
    with pytest.raises(MilleError, match=r"corrupt\.bin.*record 6\b"):
        read_mille(bad)
    # a negative sigma inside record 3
    w = np.frombuffer(p.read_bytes(), np.int32).copy()
    pos = 0
    for _ in range(2):
        pos += 1 + (w[pos] // 2) * 2
    n = w[pos] // 2
    f = w[pos + 1: pos + 1 + n].view(np.float32)
    i = w[pos + 1 + n: pos + 1 + 2 * n]
    zero = np.flatnonzero(i == 0)
    f[zero[2]] = -1.0  # first sigma of the record
    bad.write_bytes(w.tobytes())
    with pytest.raises(MilleError, match=r"record 3\b.*sigma"):
        read_mille(bad)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(MilleError, match="nothere.bin"):
        read_mille(tmp_path / "nothere.bin")


def test_released_pages_read_back_the_same_bytes(tmp_path, recs):
    """Chunks decoded after the reader dropped their pages (MADV_DONTNEED) still hold the file's data."""
    from b2luca.alignment import concat_records
    from b2luca.alignment.mille import _RELEASE_LAG, iter_raw_chunks

    p = tmp_path / "d.bin"
    write_mille(p, recs)
    raws = list(iter_raw_chunks(p, chunk_bytes=4096))  # all framed first: the early ones are released
    assert len(raws) > _RELEASE_LAG + 10
    _same(concat_records([r.decode() for r in raws]), recs)
