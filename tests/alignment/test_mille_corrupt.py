"""Damaged Mille input: every case a MilleError naming the file (and record/offset), never a traceback,
a huge allocation or a silent result."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from b2luca.alignment import MilleError, read_mille, records_from_dense, solve_steering, write_mille
from b2luca.alignment.toy import barrel_geometry, generate_tracks
from b2luca.cli import main


def _small() -> object:
    """Two records of three measurements, two local parameters each, one global label per measurement."""
    value = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    sigma = np.full(6, 0.01)
    local = np.array([[1.0, 0.5], [1.0, 1.0], [1.0, 1.5]] * 2)
    labels = np.array([[11], [12], [13]] * 2)
    der = np.ones((6, 1))
    return records_from_dense(value, sigma, local, labels, der, np.array([0, 3, 6]))


def _words(path) -> np.ndarray:
    return np.fromfile(path, dtype="<i4")


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    geo = barrel_geometry(60, n_layers=4)
    recs = generate_tracks(geo, 2000, np.zeros(6 * geo.n_sensors), np.random.default_rng(3))
    path = folder / "toy.bin"
    write_mille(path, recs)
    gz = folder / "toy.bin.gz"
    write_mille(gz, recs)
    return path, gz, recs


def test_truncated_gzip(toy_files, tmp_path):
    _, gz, _ = toy_files
    data = gz.read_bytes()
    bad = tmp_path / "cut.bin.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(MilleError, match=r"cut\.bin\.gz: truncated gzip stream near compressed byte \d+"):
        read_mille(bad)


@pytest.mark.parametrize("where", [0.3, 0.6, 0.99])
def test_bit_flipped_gzip(toy_files, tmp_path, where):
    _, gz, _ = toy_files
    data = bytearray(gz.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    bad = tmp_path / "flip.bin.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(MilleError, match=r"flip\.bin\.gz: "):
        read_mille(bad)


def test_bad_gzip_header(tmp_path):
    bad = tmp_path / "hdr.bin.gz"
    bad.write_bytes(b"\x1f\x8b\x09" + b"\x00" * 40)
    with pytest.raises(MilleError, match=r"hdr\.bin\.gz: corrupt gzip stream .*BadGzipFile"):
        read_mille(bad)


@pytest.mark.parametrize("index", [254, 2**31 - 1])
def test_flipped_local_index_is_bounded_before_allocation(tmp_path, index):
    path = tmp_path / "loc.bin"
    write_mille(path, _small())
    w = _words(path)
    n = w[0] // 2
    ints = w[1 + n: 1 + 2 * n]
    assert ints[2] == 1  # (local derivative, index 1) of the first measurement
    w[1 + n + 2] = index
    w.tofile(path)
    with pytest.raises(MilleError, match=rf"loc\.bin: corrupt record 1: local parameter index {index} exceeds "
                                         r"the record's 6 local derivative"):
        read_mille(path)
    steer = tmp_path / "steer.txt"
    steer.write_text(f"Cfiles\n{path.name}\n")
    assert main(["align", str(steer), "--out", str(tmp_path / "out"), "--quiet"]) == 2


@pytest.mark.parametrize("name", ["empty.bin", "empty.bin.gz"])
def test_empty_mille_file_is_an_error(tmp_path, capsys, name):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb"):
            pass
    else:
        path.write_bytes(b"")
    with pytest.raises(MilleError, match=rf"{name}: empty Mille file"):
        read_mille(path)
    steer = tmp_path / "steer.txt"
    steer.write_text(f"Cfiles\n{name}\n")
    assert main(["align", str(steer), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"{name}: empty Mille file" in capsys.readouterr().err


def test_nan_record_counted_and_reported(toy, tmp_path, capsys):  # toy: the session problem of conftest.py
    import shutil

    for f in (toy.datafile, toy.steering, toy.folder / "cons.txt"):
        shutil.copy(f, tmp_path / f.name)
    t = toy
    t = type(t)(tmp_path, tmp_path / t.steering.name, tmp_path / t.datafile.name, t.labels, t.truth, t.N, t.records)
    w = _words(t.datafile)
    n = w[0] // 2
    w[1: 1 + n].view(np.float32)[1] = np.nan  # measured value of record 1's first measurement
    w.tofile(t.datafile)
    back = read_mille(t.datafile)
    assert back.n_nonfinite == 1 and back.n_records == t.records.n_records - 1
    result = solve_steering(t.steering)
    assert result.n_records == t.records.n_records and result.rejected.get("nonfinite") == 1
    assert main(["align", str(t.steering), "--out", str(tmp_path / "out")]) == 0
    assert "nonfinite 1" in capsys.readouterr().out


def test_nan_sigma_and_inf_derivative_also_counted(tmp_path):
    recs = _small()
    recs.sigma = recs.sigma.copy()
    recs.sigma[4] = np.nan
    recs.glb_der = recs.glb_der.copy()
    recs.glb_der[0] = np.inf
    path = tmp_path / "nan2.bin"
    write_mille(path, recs, double=True)
    back = read_mille(path)
    assert back.n_nonfinite == 2 and back.n_records == 0


def test_special_block_longer_than_record(tmp_path):
    path = tmp_path / "sp.bin"
    # one record: header, special block (0.0, 0), (-1e15, 0), then a measurement (value, sigma, global)
    floats = np.array([0.0, 0.0, -1e15, 0.5, 0.01, 1.0], np.float32)
    ints = np.array([0, 0, 0, 0, 0, 7], np.int32)
    words = np.concatenate([[2 * floats.size], floats.view(np.int32), ints]).astype("<i4")
    words.tofile(path)
    with pytest.raises(MilleError, match=r"sp\.bin: corrupt record 1: special block of 1e\+15 pairs overruns"):
        read_mille(path)


def test_valid_special_block_still_skipped(tmp_path):
    path = tmp_path / "sp_ok.bin"
    floats = np.array([0.0, 0.0, -1.0, 9.0, 0.5, 0.01, 1.0], np.float32)
    ints = np.array([0, 0, 0, 3, 0, 0, 7], np.int32)
    np.concatenate([[2 * floats.size], floats.view(np.int32), ints]).astype("<i4").tofile(path)
    back = read_mille(path)
    assert back.n_records == 1 and back.value.tolist() == [np.float32(0.5)] and back.glb_label.tolist() == [7]
