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


def test_packed_tables_keep_every_dtype_shape_and_value(tmp_path):
    """Every column type a leaf list can hold, a fixed-size array column and an empty table round-trip
    exactly (values, dtype, native byte order)."""
    rng = np.random.default_rng(1)
    n = 37
    cols = {"i1": rng.integers(-128, 127, n).astype(np.int8), "u1": rng.integers(0, 255, n).astype(np.uint8),
            "i2": rng.integers(-9, 9, n).astype(np.int16), "i4": rng.integers(-9, 9, n).astype(np.int32),
            "i8": rng.integers(-2 ** 60, 2 ** 60, n), "u8": rng.integers(0, 2 ** 62, n).astype(np.uint64),
            "f4": rng.normal(size=n).astype(np.float32), "f8": rng.normal(size=n), "ok": rng.random(n) < 0.5,
            "cov": rng.normal(size=(n, 2, 3)), "big": rng.normal(size=n).astype(">f8")}
    f = tmp_path / "t.root"
    write_trees(f, {"hits": cols, "none": {"x": np.zeros(0, np.int16), "y": np.zeros((0, 3))}})
    got = read_trees(f, {"hits": None, "none": None})
    assert list(got["hits"]) == list(cols)
    for name, values in cols.items():
        assert got["hits"][name].dtype == values.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(got["hits"][name], values, err_msg=name)
    assert got["none"]["x"].shape == (0,) and got["none"]["x"].dtype == np.int16 and got["none"]["y"].shape == (0, 3)


def test_file_is_one_byte_branch_described_by_root_leaf_lists(tmp_path):
    """The file is plain ROOT: one TTree with one ``unsigned char`` branch holding every table's packed rows;
    the title carries each table's row count and leaf list (what a ROOT user needs to read it) -- a file's
    fixed cost is one tree and one branch, whatever its number of tables (issue 15)."""
    import uproot

    from b2luca.rootio import CONTAINER_BRANCH, CONTAINER_TITLE, CONTAINER_TREE

    f = tmp_path / "a.root"
    write_trees(f, {"hits": {"event": np.arange(4), "u": np.ones((4, 2), np.float32), "lr": np.ones(4, np.int8)},
                    "none": {"x": np.zeros(0)}, "ev": {"e": np.array([7], np.int16)}})
    with uproot.open(f) as src:
        assert src.keys(cycle=False) == [CONTAINER_TREE]
        tree = src[CONTAINER_TREE]
        assert tree.keys() == [CONTAINER_BRANCH] and tree.num_entries == 4 * 17 + 2
        assert tree.title == CONTAINER_TITLE + "hits[4]=event/L:u[2]/F:lr/B;none[0]=x/D;ev[1]=e/S"
        data = tree[CONTAINER_BRANCH].array(library="np")
    assert data[17:25].tobytes() == (1).to_bytes(8, "big")  # row 1's event, big-endian as ROOT stores values
    assert data[-2:].tobytes() == (7).to_bytes(2, "big")


def test_a_reader_of_some_tables_decompresses_only_their_baskets(tmp_path, monkeypatch):
    """Large tables get baskets of their own; reading some tables reads only the entry ranges that hold
    them (tables closer than a basket in one range), and every table reads back exactly."""
    import uproot

    from b2luca import rootio
    from b2luca.rootio import CONTAINER_BRANCH, CONTAINER_TREE

    monkeypatch.setattr(rootio, "BASKET_BYTES", 1000)
    rng = np.random.default_rng(3)
    tables = {"a": {"x": rng.normal(size=200)}, "b": {"y": rng.integers(0, 9, 10)}, "c": {"z": rng.normal(size=300)},
              "d": {"w": np.arange(3, dtype=np.int32)}}
    f = tmp_path / "big.root"
    write_trees(f, tables)
    with uproot.open(f) as src:
        assert src[CONTAINER_TREE][CONTAINER_BRANCH].num_baskets == 3  # a | b, c | d: a basket closes once full
    read_ranges = []
    original = uproot.TBranch.array

    def spy(self, *args, **kwargs):
        read_ranges.append((kwargs.get("entry_start"), kwargs.get("entry_stop")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(uproot.TBranch, "array", spy)
    got = read_trees(f, {"c": None})
    assert read_ranges == [(1600 + 80, 1600 + 80 + 2400)]
    np.testing.assert_array_equal(got["c"]["z"], tables["c"]["z"])
    read_ranges.clear()
    got = read_trees(f, {"d": None, "a": None})  # far apart: two reads, not the span between them
    assert read_ranges == [(0, 1600), (4080, 4092)]
    np.testing.assert_array_equal(got["a"]["x"], tables["a"]["x"])
    np.testing.assert_array_equal(got["d"]["w"], tables["d"]["w"])
    read_ranges.clear()
    read_trees(f, {"c": None, "b": None})  # closer than a basket: one read
    assert read_ranges == [(1600, 4080)]
    got = read_trees(f, {t: None for t in tables})
    for t, cols in tables.items():
        for k, v in cols.items():
            np.testing.assert_array_equal(got[t][k], v, err_msg=t)


def test_large_tables_are_split_into_baskets_and_ranges_across_them_read_exactly(tmp_path, monkeypatch):
    """A table larger than a basket may hold is written in several (one extend each); a read of tables that
    starts in the middle of one basket and ends in the middle of another returns exactly their rows."""
    import uproot

    from b2luca import rootio
    from b2luca.rootio import CONTAINER_BRANCH, CONTAINER_TREE

    monkeypatch.setattr(rootio, "CHUNK_BYTES", 500)
    rng = np.random.default_rng(5)
    tables = {"a": {"x": rng.normal(size=10)}, "b": {"y": rng.normal(size=200), "k": rng.integers(0, 9, 200)},
              "c": {"z": np.arange(7, dtype=np.int16)}}
    f = tmp_path / "chunks.root"
    write_trees(f, tables)  # one basket of 80 + 3200 + 14 bytes (< BASKET_BYTES), written in chunks of 500
    with uproot.open(f) as src:
        branch = src[CONTAINER_TREE][CONTAINER_BRANCH]
        assert [tuple(map(int, branch.basket_entry_start_stop(i))) for i in range(branch.num_baskets)] == \
            [(i, min(i + 500, 3294)) for i in range(0, 3294, 500)]
    for wanted in ({"b": None}, {"b": ["k"], "c": None}, {"a": ["x"], "b": ["y"]}):
        got = read_trees(f, wanted)  # b: bytes 80-3280, in baskets 0 to 6
        for t, cols in wanted.items():
            for k in cols or tables[t]:
                np.testing.assert_array_equal(got[t][k], tables[t][k], err_msg=f"{t}.{k}")


def test_a_table_list_too_long_for_a_root_title_is_refused_before_writing(tmp_path):
    """ROOT and uproot cannot write a tree title over ~32 KB (a key's length is 16-bit): the writer says so,
    naming the file, and leaves no file."""
    f = tmp_path / "wide.root"
    with pytest.raises(ValueError, match=r"wide\.root: the table list of 300 tables is \d+ bytes long, more than "
                                         r"the 32000 a ROOT tree title can hold"):
        write_trees(f, {f"table_{i}": {f"column_with_a_long_name_{j}": np.zeros(1) for j in range(4)}
                        for i in range(300)})
    assert list(tmp_path.iterdir()) == []
    write_trees(f, {f"table_{i}": {"x": np.zeros(1)} for i in range(300)})  # far below the limit: written
    assert len(read_trees(f, {"table_299": None})["table_299"]["x"]) == 1


def test_corrupt_container_names_file_tree_and_every_missing_table(tmp_path):
    """A damaged table list, a byte count that does not match it, and all missing tables/columns of one
    read are named in one line."""
    import uproot

    from b2luca.rootio import CONTAINER_BRANCH, CONTAINER_TITLE, CONTAINER_TREE

    f = tmp_path / "a.root"
    write_trees(f, {"hits": {"x": np.arange(3.0)}})
    with pytest.raises(RootReadError, match=r"a\.root: tree 'cdc' is missing; tree 'hits' lacks branch\(es\) \['y'\]"):
        read_trees(f, {"cdc": None, "hits": ["x", "y"]})
    for title, message in ((CONTAINER_TITLE + "hits[3]=x/Q", r"corrupt table list .*'x/Q'"),
                           (CONTAINER_TITLE + "hits[2]=x/D", r"holds 24 bytes, its table list describes 16"),
                           ("hits[3]=x/D", r"corrupt table list .*does not start with 'b2luca-tables:': not a b2luca "
                                           r"table list")):
        bad = tmp_path / "bad.root"
        with uproot.recreate(bad) as out:
            out.mktree(CONTAINER_TREE, {CONTAINER_BRANCH: np.uint8}, title=title).extend(
                {CONTAINER_BRANCH: np.zeros(24, np.uint8)})
        with pytest.raises(RootReadError, match=r"bad\.root: tree 'b2luca_tables': " + message):
            read_trees(bad, {"hits": None})
    with pytest.raises(ValueError, match=r"tree 'a;b': a table name needs letters"):
        write_trees(f, {"a;b": {"x": np.arange(3.0)}})


def test_files_of_the_tree_per_table_layout_still_read(tmp_path):
    """Files written before the container layout (one packed TTree per table) read as before."""
    import uproot

    from b2luca.rootio import PACKED_BRANCH, PACKED_TITLE, pack_table

    f = tmp_path / "old.root"
    with uproot.recreate(f) as out:
        for name, cols in {"hits": {"event": np.arange(4), "lr": np.ones(4, np.int8)}, "ev": {"e": np.ones(2)}}.items():
            leaflist, rows = pack_table(cols)
            out.mktree(name, {PACKED_BRANCH: np.dtype((np.uint8, rows.shape[1:]))},
                       title=PACKED_TITLE + leaflist).extend({PACKED_BRANCH: rows})
    got = read_trees(f, {"hits": ["lr"], "ev": None})
    assert list(got["hits"]) == ["lr"] and got["hits"]["lr"].tolist() == [1, 1, 1, 1]
    assert got["ev"]["e"].tolist() == [1.0, 1.0]


def test_files_of_the_per_column_layout_still_read(tmp_path):
    """Files written before the packed layout (one branch per column) read as before."""
    import uproot

    f = tmp_path / "old.root"
    with uproot.recreate(f) as out:
        tree = out.mktree("hits", {"x": np.float64, "n": np.int32})
        tree.extend({"x": np.arange(3.0), "n": np.arange(3, dtype=np.int32)})
    got = read_trees(f, {"hits": ["n"]})
    assert list(got["hits"]) == ["n"] and got["hits"]["n"].tolist() == [0, 1, 2]
    assert set(read_trees(f, {"hits": None})["hits"]) == {"x", "n"}
    with pytest.raises(RootReadError, match=r"old\.root: tree 'hits' lacks branch\(es\) \['y'\]"):
        read_trees(f, {"hits": ["y"]})


def test_optional_trees_are_left_out_and_bad_input_is_named(tmp_path):
    f = tmp_path / "a.root"
    write_trees(f, {"hits": {"x": np.arange(3.0)}})
    assert set(read_trees(f, {"hits": None, "extra": None}, optional=("extra",))) == {"hits"}
    with pytest.raises(ValueError, match=r"a\.root: tree 'hits': column name 'a:b' is not a ROOT leaf name"):
        write_trees(f, {"hits": {"a:b": np.arange(3.0)}})
    with pytest.raises(ValueError, match=r"tree 'hits': column 's' has dtype <U1"):
        write_trees(f, {"hits": {"s": np.array(["a"])}})
    with pytest.raises(ValueError, match=r"tree 'hits': columns of different lengths \[2, 3\]"):
        write_trees(f, {"hits": {"x": np.arange(3.0), "y": np.arange(2.0)}})
    assert read_trees(f, {"hits": None})["hits"]["x"].tolist() == [0.0, 1.0, 2.0]  # failed writes left it alone


def test_corrupt_packed_table_names_file_and_tree(tmp_path):
    """A table whose rows do not match its leaf list, or whose leaf list is damaged, is named."""
    import uproot

    from b2luca.rootio import PACKED_BRANCH, PACKED_TITLE

    f = tmp_path / "bad.root"
    with uproot.recreate(f) as out:
        tree = out.mktree("cdc", {PACKED_BRANCH: np.dtype((np.uint8, (5,)))}, title=PACKED_TITLE + "event/L")
        tree.extend({PACKED_BRANCH: np.zeros((2, 5), np.uint8)})
        tree = out.mktree("svd", {PACKED_BRANCH: np.dtype((np.uint8, (8,)))}, title=PACKED_TITLE + "event/Q")
        tree.extend({PACKED_BRANCH: np.zeros((2, 8), np.uint8)})
    with pytest.raises(RootReadError, match=r"bad\.root: tree 'cdc': corrupt rows .*expected \(n, 8\) bytes"):
        read_trees(f, {"cdc": None})
    with pytest.raises(RootReadError, match=r"bad\.root: tree 'svd': corrupt column list .*'event/Q'"):
        read_trees(f, {"svd": ["event"]})


def test_truncated_file_is_named(tmp_path):
    """A file cut short (a copy that died half-way) names the file instead of returning partial tables."""
    f = tmp_path / "cut.root"
    write_trees(f, {"hits": {"x": np.random.default_rng(2).normal(size=5000)}})
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(RootReadError, match=r"cut\.root: cannot read trees \['hits'\]"):
        read_trees(f, {"hits": None})


def test_files_are_written_with_zstd_and_zlib_files_still_read(tmp_path):
    """Written files use Zstandard (issue 15: 4x faster to write than zlib); files with ROOT's zlib default read."""
    import uproot

    from b2luca.rootio import pack_table

    f = tmp_path / "new.root"
    write_trees(f, {"t": {"a": np.arange(1000.0)}})
    assert isinstance(uproot.open(f).file.compression, uproot.ZSTD)
    old = tmp_path / "zlib.root"
    leaflist, rows = pack_table({"a": np.arange(5.0)})
    with uproot.recreate(old, compression=uproot.ZLIB(1)) as out:
        out.mktree("t", {"rows": np.dtype((np.uint8, rows.shape[1:]))}, title="b2luca-rows:" + leaflist).extend({"rows": rows})
    assert read_trees(old, {"t": None})["t"]["a"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
