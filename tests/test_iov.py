"""IoV / ExpRun arithmetic with basf2's conventions."""

import pytest

from b2luca.iov import ExpRun, IoV


def test_parse_and_print_round_trip():
    for text in ["0,0,-1,-1", "26,1,26,8", "26,5,-1,-1", "7,0,8,-1"]:
        assert str(IoV.parse(text)) == text
    assert IoV.parse(" 26 , 1, 26 ,8") == IoV(26, 1, 26, 8)
    assert IoV.from_list([26, 1, 26, 8]).as_list() == [26, 1, 26, 8]


@pytest.mark.parametrize("bad", ["1,2,3", "a,b,c,d", "26,9,26,8", "26,1,-1,5", "-2,0,-1,-1"])
def test_parse_rejects_malformed(bad):
    with pytest.raises(ValueError):
        IoV.parse(bad)


def test_open_ends_and_always():
    always = IoV.always()
    assert always.is_always and str(always) == "0,0,-1,-1"
    assert always.contains(ExpRun(0, 0)) and always.contains(ExpRun(999, 99999))
    open_run = IoV(26, 3, 26, -1)  # to the last run of experiment 26
    assert open_run.contains(ExpRun(26, 100000)) and not open_run.contains(ExpRun(27, 0))
    assert not open_run.contains(ExpRun(26, 2))
    prompt = IoV(26, 5, -1, -1)
    assert prompt.contains(ExpRun(30, 1)) and not prompt.contains(ExpRun(26, 4))


def test_contains_overlaps_intersection():
    a, b = IoV(26, 1, 26, 10), IoV(26, 5, -1, -1)
    assert a.overlaps(b) and b.overlaps(a)
    assert a & b == IoV(26, 5, 26, 10)
    assert IoV(26, 1, 26, 4).intersection(b) is None
    assert not IoV(26, 1, 26, 4).overlaps(b)
    assert IoV(0, 0, -1, -1) & a == a
    assert IoV(26, 1, 27, -1) & IoV(27, 3, -1, -1) == IoV(27, 3, 27, -1)
    assert a.contains(IoV(26, 2, 26, 3)) and not a.contains(b)
    assert ExpRun(26, 4) in a and ExpRun(26, 11) not in a


def test_exprun_ordering():
    assert ExpRun(26, 9) < ExpRun(27, 0) < ExpRun(27, 1)
    assert sorted([ExpRun(2, 1), ExpRun(1, 5)]) == [ExpRun(1, 5), ExpRun(2, 1)]
