"""pede steering / constraint / parameter files."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.alignment import SteeringError, read_steering


def test_full_steering(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"\x00" * 16)
    (tmp_path / "cons.txt").write_text(
        "! comment\nConstraint 0.5\n 11 1.0\n 12 -2.0 13 3.0\nMeasurement 1.0 0.01\n21 1.0\n")
    (tmp_path / "steer.txt").write_text(
        "* header comment\n"
        "Cfiles\ndata.bin\ncons.txt  ! constraints\n"
        "Fortranfiles\n/abs/f.bin\n"
        "Parameter\n11 0.1 -1.0\n12 0.0 0.05\n"
        "method sparseMINRES 3 0.01\n"
        "entries 25\nchiscut 30. 6.\noutlierdownweighting 4\ndwfractioncut 0.2\nhugecut 50\n"
        "threads 2 2\nprintcounts\nbogus keyword here\nend\nafter end is ignored\n")
    st = read_steering(tmp_path / "steer.txt")
    assert st.cfiles == [tmp_path / "data.bin"]
    assert [str(p) for p in st.ffiles] == ["/abs/f.bin"]
    assert st.method == "minres" and st.pede_method == "sparseMINRES"
    assert st.iterations == 3 and st.dchi2 == pytest.approx(0.01)
    assert st.entries == 25 and st.chiscut == (30.0, 6.0) and st.outlierdownweighting == 4
    assert st.dwfractioncut == pytest.approx(0.2) and st.hugecut == 50 and st.threads == (2, 2)
    assert st.parameters[11].presigma == -1.0 and st.parameters[11].initial == pytest.approx(0.1)
    assert st.parameters[12].presigma == pytest.approx(0.05)
    c0, c1 = st.constraints
    assert c0.value == 0.5 and c0.sigma is None
    assert list(c0.labels) == [11, 12, 13] and np.allclose(c0.factors, [1, -2, 3])
    assert c1.sigma == pytest.approx(0.01) and list(c1.labels) == [21]
    assert any("steer.txt:18" in w and "bogus" in w for w in st.warnings)


@pytest.mark.parametrize("name,ours", [("inversion", "auto"), ("diagonalization", "dense"),
                                       ("fullMINRES", "minres"), ("decomposition", "dense"), ("sparse", "sparse")])
def test_method_mapping(tmp_path, name, ours):
    (tmp_path / "s.txt").write_text(f"method {name} 1 0.1\n")
    assert read_steering(tmp_path / "s.txt").method == ours


def test_errors_name_file_and_line(tmp_path):
    (tmp_path / "s.txt").write_text("method inversion\nConstraint 0\n11 1.0 12\n")
    with pytest.raises(SteeringError, match=r"s\.txt:3"):
        read_steering(tmp_path / "s.txt")
    (tmp_path / "t.txt").write_text("method magic\n")
    with pytest.raises(SteeringError, match=r"t\.txt:1.*magic"):
        read_steering(tmp_path / "t.txt")
