"""The compiled decoder of float32 Mille records (mille._decode_fast -> _kernels.decode_float32): a round trip
and the record named by each kind of corruption it detects."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment.errors import MilleError
from b2luca.alignment.mille import MilleRecords, _encode, _frame_chunk


def _two_records() -> MilleRecords:
    i8 = lambda *v: np.array(v, np.int64)  # noqa: E731
    return MilleRecords(rec_ptr=i8(0, 2, 5), value=np.array([0.5, -1.5, 2.0, 0.25, -0.75]),
                        sigma=np.array([0.125, 0.25, 0.375, 0.5, 0.0625]), loc_meas=i8(0, 0, 1, 2, 3, 4),
                        loc_index=np.array([0, 1, 0, 0, 0, 1], np.int32), loc_der=np.array([1.0, 2, 3, 4, 5, 6]),
                        glb_meas=i8(0, 1, 1, 2, 3, 4), glb_label=i8(11, 12, 13, 21, 22, 23),
                        glb_der=np.array([0.5, 0.25, -1.0, 2.0, -0.5, 1.5]))


def _words(recs: MilleRecords) -> np.ndarray:
    return np.frombuffer(_encode(recs, False, False), "<i4").copy()


def _decode(words: np.ndarray) -> MilleRecords:
    raw = _frame_chunk(words.tobytes(), False, True, "f.bin", 0)
    assert raw is not None
    return raw.decode()


def test_round_trip():
    recs = _two_records()
    out = _decode(_words(recs))
    for f in ("rec_ptr", "value", "sigma", "loc_meas", "loc_index", "loc_der", "glb_meas", "glb_label", "glb_der"):
        assert np.array_equal(getattr(out, f), getattr(recs, f)), f
    assert out.loc_index.dtype == np.int32 and out.meas_sorted


def _second_record_pairs(words: np.ndarray) -> tuple[int, int, int]:
    """Word offsets of the second record's floats and ints, and its pair count."""
    n0 = int(words[0]) // 2
    s1 = 1 + 2 * n0
    n1 = int(words[s1]) // 2
    return s1 + 1, s1 + 1 + n1, n1


@pytest.mark.parametrize("what", ["sigma", "negative", "odd_zeros"])
def test_corruption_names_the_record(what):
    w = _words(_two_records())
    f0, i0, n = _second_record_pairs(w)
    fl = w.view(np.float32)
    ints = w[i0: i0 + n]
    if what == "sigma":  # the second record's first sigma (its second int-0 pair after the header)
        k = np.flatnonzero(ints == 0)[2]
        fl[f0 + k] = -1.0
        match = r"f\.bin: corrupt record 2: non-positive sigma -1\.0"
    elif what == "negative":  # a negative label
        w[i0 + n - 1] = -5
        match = r"f\.bin: corrupt record 2: malformed pair sequence"
    else:  # a derivative's index set to 0: an even number of int-0 pairs (a value without its sigma)
        w[i0 + n - 1] = 0
        match = r"f\.bin: corrupt record 2: malformed pair sequence"
    with pytest.raises(MilleError, match=match):
        _decode(w)
