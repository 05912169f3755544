"""Reading ROOT trees branch by branch: round trip and errors that name the file, tree and branch."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.rootio import RootReadError, read_trees, write_trees


def test_round_trip_reads_only_the_requested_branches(tmp_path):
    f = tmp_path / "a.root"
    write_trees(f, {"hits": {"x": np.arange(5.0), "n": np.arange(5, dtype=np.int32)}, "ev": {"e": np.ones(2)}})
    got = read_trees(f, {"hits": ["x"], "ev": ["e"]})
    assert set(got) == {"hits", "ev"} and set(got["hits"]) == {"x"}
    assert np.array_equal(got["hits"]["x"], np.arange(5.0)) and np.array_equal(got["ev"]["e"], np.ones(2))


def test_missing_tree_branch_or_unreadable_file_names_them(tmp_path):
    f = tmp_path / "a.root"
    write_trees(f, {"hits": {"x": np.arange(3.0)}})
    with pytest.raises(RootReadError, match=r"a\.root: tree 'cdc' is missing"):
        read_trees(f, {"cdc": ["x"]})
    with pytest.raises(RootReadError, match=r"a\.root: tree 'hits' lacks branch\(es\) \['y'\]"):
        read_trees(f, {"hits": ["x", "y"]})
    bad = tmp_path / "bad.root"
    bad.write_bytes(b"not a ROOT file")
    with pytest.raises(RootReadError, match=r"bad\.root: cannot read"):
        read_trees(bad, {"hits": ["x"]})
