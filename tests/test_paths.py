"""Issue 17 item 2: names that become path components are validated once, and paths built from them
never leave their root (work_dir, archive, conditions directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from b2luca.catalogue import discover
from b2luca.conditions import GlobalTag
from b2luca.config import load_config
from b2luca.errors import B2lucaError, CatalogueError, ConfigError, GlobalTagError, UnsafePathError
from b2luca.paths import check_component, check_name, under
from b2luca.runners.base import output_database
from b2luca.tasks.context import BucketContext

from bucket_helpers import copy_calibrations, make_bucket


@pytest.mark.parametrize("name", ["..", ".", "../../../X", "a/b", "/abs", "", ".hidden", "-opt", "a\\b", "x\x00"])
def test_check_name_rejects_path_tricks(name):
    with pytest.raises(UnsafePathError, match="calibration name"):
        check_name(name, "calibration name")


@pytest.mark.parametrize("name", ["VXDCDCAlignment", "prompt_demo", "data_reprocessing_prompt.v2", "r-1", "_x"])
def test_check_name_accepts_ordinary_names(name):
    assert check_name(name, "x") == name


def test_calibration_names_may_hold_spaces_but_no_path_tricks():
    assert check_component("CDC Tracking", "calibration") == "CDC Tracking"  # a real basf2 calibration name
    for bad in ("..", ".", "../../../X", "a/b", "a\\b", "", " x", ".hidden", "x\n"):
        with pytest.raises(UnsafePathError, match="calibration"):
            check_component(bad, "calibration")


def test_under_keeps_paths_under_their_root(tmp_path: Path):
    assert under(tmp_path, "a", "b.json") == tmp_path / "a" / "b.json"
    for parts in (("..", "x"), ("a", "..", "..", "x"), ("/etc/passwd",)):
        with pytest.raises(UnsafePathError, match="would leave its root"):
            under(tmp_path, *parts, what="archive destination")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    os.symlink(outside, tmp_path / "link")
    with pytest.raises(UnsafePathError):  # a symlink pointing out counts as leaving
        under(tmp_path, "link", "file")


def _config_with(tmp_path: Path, edit) -> Path:
    config = make_bucket(tmp_path)
    doc = yaml.safe_load(config.read_text())
    edit(doc)
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


@pytest.mark.parametrize("edit, key", [
    (lambda d: d["conditions"].__setitem__("prompt_global_tag", ".."), "conditions.prompt_global_tag"),
    (lambda d: d["conditions"].__setitem__("database_chain", ["nominal_demo", "../../x"]), "conditions.database_chain"),
    (lambda d: d["conditions"].__setitem__("reference_global_tag", "."), "conditions.reference_global_tag"),
    (lambda d: d["bucket"].__setitem__("name", ".."), "bucket.name"),
    (lambda d: d.__setitem__("local_calibrations", {"../../../PXD": {"staging_pxd_demo": ["PXDMasks"]}}),
     "local_calibrations"),
    (lambda d: d.__setitem__("local_calibrations", {"PXD": {"../staging": ["PXDMasks"]}}), "local_calibrations.PXD"),
])
def test_schema_rejects_names_that_leave_their_directory(tmp_path: Path, edit, key):
    config = _config_with(tmp_path, edit)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert message.startswith(f"{config}: {key}") and "must match" in message and "\n" not in message


def test_catalogue_rejects_a_calibration_name_with_a_path(tmp_path: Path):
    calibrations = copy_calibrations(tmp_path)
    script = calibrations / "svd_time_offsets.py"
    script.write_text(script.read_text().replace('name="SVDTimeOffsets"', 'name="../../../X"'))
    with pytest.raises(CatalogueError) as info:
        discover(calibrations)
    assert re.search(r"svd_time_offsets\.py:\d+: invalid CalibrationSettings: .*'\.\./\.\./\.\./X' cannot be used "
                     r"as a file or directory name", str(info.value))


def test_paths_built_from_names_are_checked(tmp_path: Path):
    cfg = load_config(make_bucket(tmp_path))
    ctx = BucketContext(cfg)
    assert ctx.calibration_dir("CDCTimeZeros") == cfg.work_dir / "calibrations" / "CDCTimeZeros"
    for bad in ("../../../X", "..", "a/b"):
        with pytest.raises(UnsafePathError):
            ctx.calibration_dir(bad)
        with pytest.raises(UnsafePathError):
            output_database(tmp_path, bad)
    with pytest.raises(GlobalTagError):
        GlobalTag.create(tmp_path / "conditions", "..")
    assert not (tmp_path / "database.txt").exists() and not (tmp_path / "globaltag.json").exists()
    assert all(isinstance(e, B2lucaError) for e in (UnsafePathError("x"), GlobalTagError("x")))
