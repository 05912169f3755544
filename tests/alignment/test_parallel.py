"""Threaded data passes: same system as one thread, reproducible, failures surface with file and record."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import MilleError, write_mille
from b2luca.alignment import problem as problem_mod
from b2luca.alignment.problem import AlignmentProblem, assemble
from b2luca.alignment.assemble import Assembler
from b2luca.alignment.toy import barrel_geometry, generate_tracks


@pytest.fixture()
def three_files(tmp_path, monkeypatch):
    geo = barrel_geometry(300, n_layers=5)
    rng = np.random.default_rng(5)
    truth = np.tile([0.1, 0.1, 0.1, 5e-4, 5e-4, 5e-4], geo.n_sensors) * rng.normal(size=6 * geo.n_sensors)
    files = []
    for k in range(3):
        f = tmp_path / f"part{k}.bin"
        write_mille(f, generate_tracks(geo, 3000, truth, rng))
        files.append(f)
    monkeypatch.setattr(problem_mod, "CHUNK_BYTES", 64 << 10)  # many chunks per file
    return files


def _system(files, threads):
    problem = AlignmentProblem(cfiles=files, threads=threads)
    return assemble(problem, Assembler, {})


def test_threads_give_the_same_system(three_files):
    one = _system(three_files, 1)
    three = _system(three_files, 3)
    assert np.array_equal(one.labels, three.labels)
    assert (one.n_records, one.n_used, one.n_meas, one.ndf) == (three.n_records, three.n_used, three.n_meas,
                                                                three.ndf)
    assert np.array_equal(one.entries, three.entries)
    # labels are registered and chunk sums added in chunk order, whatever the threads: bit-identical
    assert (one.C != three.C).nnz == 0 and np.array_equal(one.b, three.b) and one.chi2_0 == three.chi2_0
    again = _system(three_files, 3)
    assert (three.C != again.C).nnz == 0 and np.array_equal(three.b, again.b) and three.chi2_0 == again.chi2_0


def test_worker_failure_names_file_and_record(three_files):
    bad = three_files[1]
    data = bytearray(bad.read_bytes())
    # corrupt the sigma of a measurement deep inside the file (record boundaries stay valid)
    words = np.frombuffer(bytes(data), "<i4").copy()
    nw = int(words[0])
    n = nw // 2
    rec2 = 1 + 2 * n  # second record starts here (first record: length word, n floats, n ints)
    n2 = int(words[rec2]) // 2
    ints = words[rec2 + 1 + n2: rec2 + 1 + 2 * n2]
    zero = np.flatnonzero(ints == 0)  # header, value, sigma, value, sigma, ...
    sigma_pair = zero[2]
    words[rec2 + 1 + sigma_pair] = np.float32(-1.0).view(np.int32)
    bad.write_bytes(words.tobytes())
    with pytest.raises(MilleError, match=rf"{bad.name}: corrupt record 2: non-positive sigma"):
        _system(three_files, 2)


def test_thread_count_from_steering(tmp_path):
    (tmp_path / "steer.txt").write_text("threads 3 1\nend\n")
    assert AlignmentProblem.from_steering(tmp_path / "steer.txt").n_threads() == 3
    (tmp_path / "steer.txt").write_text("end\n")
    assert AlignmentProblem.from_steering(tmp_path / "steer.txt").n_threads() >= 1


def test_in_place_pick_matches_explicit_sums(monkeypatch):
    """out[rows[k]] -= x[column of entry k], compiled in place and through the public fallback."""
    from b2luca.alignment import assemble as asm_mod
    from b2luca.alignment import global_system as gs_mod

    rng = np.random.default_rng(3)
    ncol, nout = 500, 40
    counts = (rng.random(ncol) < 0.6).astype(np.int32)  # at most one entry per column
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    rows = rng.integers(0, nout, int(indptr[-1])).astype(np.int32)
    x = rng.random((ncol, 6))
    base = rng.random((nout, 6))
    expect = base.copy()
    for k, j in enumerate(np.flatnonzero(counts)):
        expect[rows[k]] -= x[j]
    fast = base.copy()
    asm_mod._add_picked(fast, indptr, rows, x)
    monkeypatch.setattr(gs_mod, "_csc_matvecs", None)
    public = base.copy()
    asm_mod._add_picked(public, indptr, rows, x)
    assert np.allclose(fast, expect, rtol=1e-14, atol=1e-14)
    assert np.allclose(public, expect, rtol=1e-14, atol=1e-14)


def test_chunk_sums_add_up_to_the_systems_of_the_chunks(three_files):
    """The one accumulator of the pass equals the sum of the systems of each file assembled alone."""
    from b2luca.alignment.assemble import merge_systems

    whole = _system(three_files, 2)
    parts = [_system([f], 1) for f in three_files]
    summed = merge_systems(parts)
    assert np.array_equal(whole.labels, summed.labels)
    assert abs(whole.C - summed.C).max() <= 1e-12 * abs(whole.C).max()
    assert np.allclose(whole.b, summed.b, rtol=1e-12, atol=1e-12 * np.abs(whole.b).max())
    assert np.array_equal(whole.entries, summed.entries)
    assert (whole.n_used, whole.ndf) == (summed.n_used, summed.ndf)
    assert whole.chi2_0 == pytest.approx(summed.chi2_0, rel=1e-12)


@pytest.mark.parametrize("nblocks", [300, 70_000])  # 16-bit radix path, and 64-bit keys beyond 65535 blocks
def test_pair_keys_unique_inverse(nblocks):
    """The chunk's block-pair keys: sorted distinct keys and each key's position, as np.unique gives."""
    from b2luca.alignment.assemble import _unique_inverse
    from b2luca.alignment.global_system import NBIG

    rng = np.random.default_rng(nblocks)
    a = rng.integers(0, nblocks, 5000)
    b = a + rng.integers(0, 40, a.size)
    b = np.minimum(b, nblocks - 1)
    keys = a * NBIG + b
    uk, inv = _unique_inverse(keys)
    ref_u, ref_inv = np.unique(keys, return_inverse=True)
    assert np.array_equal(uk, ref_u) and np.array_equal(inv, ref_inv.ravel())
    assert np.array_equal(uk[inv], keys)
