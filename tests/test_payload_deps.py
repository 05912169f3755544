"""Issue 17 item 7: payloads a calibration reads versus what it declares in depends_on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from b2luca.catalogue import build_plan, discover
from b2luca.conditions import DatabaseChain, LocalDatabase
from b2luca.errors import UndeclaredDependencyError
from b2luca.iov import ExpRun, IoV
from b2luca.payload_deps import (PRODUCTION_READS, check_production_reads, check_reads, production_requirements,
                                undeclared_reads, write_reads)

from bucket_helpers import REPO, copy_calibrations

ALIGNMENT_READS = ["VXDAlignment", "CDCAlignment", "CDCTimeZeros", "SVDTimeOffsets", "PXDMasks"]


def test_alignment_declares_every_calibration_whose_payloads_it_reads():
    catalogue = discover(REPO / "calibrations")
    plan = build_plan(catalogue)
    assert {"CDCTimeZeros", "SVDTimeOffsets", "PXDHotDeadPixels"} <= set(plan.dependencies("VXDCDCAlignment"))
    assert undeclared_reads(catalogue, plan, "VXDCDCAlignment", ALIGNMENT_READS) == []


def test_the_old_declaration_is_caught(tmp_path: Path):
    calibrations = copy_calibrations(tmp_path)
    script = calibrations / "vxdcdc_alignment.py"
    text = script.read_text()
    assert "depends_on=[cdc_t0, svd_t0, pxd_masks]" in text
    script.write_text(text.replace("depends_on=[cdc_t0, svd_t0, pxd_masks]", "depends_on=[cdc_t0]"))
    catalogue = discover(calibrations)
    plan = build_plan(catalogue)
    assert undeclared_reads(catalogue, plan, "VXDCDCAlignment", ALIGNMENT_READS) == [
        ("SVDTimeOffsets", ["SVDTimeOffsets"]), ("PXDMasks", ["PXDHotDeadPixels"])]
    reads = tmp_path / "payloads_read.json"
    write_reads(reads, [{"name": n, "database": None, "revision": None} for n in ALIGNMENT_READS])
    with pytest.raises(UndeclaredDependencyError) as info:
        check_reads(catalogue, plan, "VXDCDCAlignment", reads)
    message = str(info.value)
    assert "SVDTimeOffsets (produced by SVDTimeOffsets)" in message and "PXDMasks (produced by PXDHotDeadPixels)" in message
    assert "Add PXDHotDeadPixels, SVDTimeOffsets to depends_on" in message and str(script) in message


def test_stage_order_counts_as_a_dependency():
    catalogue = discover(REPO / "calibrations")
    plan = build_plan(catalogue)
    assert undeclared_reads(catalogue, plan, "BeamSpot", ["VXDAlignment", "CDCTimeZeros", "BeamSpot"]) == []
    # a raw calibration reading a cdst calibration's payload gets the previous bucket run's revision
    assert undeclared_reads(catalogue, plan, "CDCTimeZeros", ["BeamSpot"]) == [("BeamSpot", ["BeamSpot"])]
    check_reads(catalogue, plan, "CDCTimeZeros", Path("/nonexistent/payloads_read.json"))  # basf2 runner: no record


def test_chain_records_every_lookup(tmp_path: Path):
    first, second = LocalDatabase(tmp_path / "a").create(), LocalDatabase(tmp_path / "b").create()
    second.store("CDCTimeZeros", {"t0": np.zeros(3)}, IoV(0, 0, -1, -1))
    chain = DatabaseChain([first, second])
    run = ExpRun(26, 1)
    assert chain.read_or_none("PXDMasks", run) is None
    chain.read("CDCTimeZeros", run)
    chain.lookup("CDCTimeZeros", run)
    assert chain.lookups() == [{"name": "PXDMasks", "database": None, "revision": None},
                               {"name": "CDCTimeZeros", "database": str(second.path), "revision": "1"}]


def test_alignment_looks_up_exactly_its_reconstruction_payloads(tmp_path: Path):
    import sys

    sys.path.insert(0, str(REPO))
    from b2luca.reco.measurements import load_constants
    from calibrations.vxdcdc_alignment import RECO_PAYLOADS

    chain = DatabaseChain([LocalDatabase(tmp_path / "empty").create()])
    load_constants(chain, ExpRun(26, 1), names=RECO_PAYLOADS)
    assert [item["name"] for item in chain.lookups()] == list(RECO_PAYLOADS) == ALIGNMENT_READS
    assert json.dumps(chain.lookups())  # what the native runner writes


def test_a_calibration_can_start_from_the_constants_before_the_bucket(tmp_path: Path):
    """The alignment starts from the alignment in force before the bucket, not from its own earlier
    result in the bucket's database (else a --rerun iterates instead of reproducing the first run)."""
    bucket, nominal = LocalDatabase(tmp_path / "prompt").create(), LocalDatabase(tmp_path / "nominal").create()
    always = IoV(0, 0, -1, -1)
    nominal.store("VXDAlignment", {"params": np.zeros(2)}, always)
    bucket.store("VXDAlignment", {"params": np.ones(2)}, always)
    bucket.store("CDCTimeZeros", {"t0": np.ones(3)}, always)
    chain = DatabaseChain([bucket, nominal], bucket_database=bucket)
    view = chain.without_bucket_results(["VXDAlignment", "CDCAlignment"])
    run = ExpRun(26, 1)
    assert np.array_equal(view.read("VXDAlignment", run)["params"], np.zeros(2))
    assert np.array_equal(view.read("CDCTimeZeros", run)["t0"], np.ones(3))  # other payloads: the bucket's
    assert np.array_equal(chain.read("VXDAlignment", run)["params"], np.ones(2))
    names = [item["name"] for item in chain.lookups()]  # one record for the chain and its view
    assert list(dict.fromkeys(names)) == ["VXDAlignment", "CDCTimeZeros"] and len(names) == 3


def test_native_chain_knows_the_bucket_database(tmp_path: Path):
    from b2luca.runners.native_job import chain_from_caf_config

    chain = chain_from_caf_config({"testing_payloads": str(tmp_path / "prompt" / "database.txt"),
                                   "database_chain": ["nominal"], "b2luca": {"conditions_directory": str(tmp_path)}})
    assert chain.bucket_database is chain.databases[0] and chain.databases[0].path == tmp_path / "prompt"
    assert chain.databases[1].path == tmp_path / "nominal"


def test_production_waits_for_the_raw_producers_of_what_reconstruction_reads():
    catalogue = discover(REPO / "calibrations")
    plan = build_plan(catalogue)
    assert set(production_requirements(catalogue, plan)) == {
        "CDCTimeZeros", "SVDTimeOffsets", "PXDHotDeadPixels", "VXDCDCAlignment"}
    assert "PXDBackgroundGAN" not in production_requirements(catalogue, plan)
    # reconstruction looks up exactly PRODUCTION_READS (what the static rule is built from)
    assert set(ALIGNMENT_READS) <= set(PRODUCTION_READS)


def test_a_cdst_calibration_may_not_read_a_raw_payload_production_does_not_wait_for():
    """The GAN runs beside production, so a cDST calibration reading its payload must declare it."""
    catalogue = discover(REPO / "calibrations")
    plan = build_plan(catalogue)
    assert undeclared_reads(catalogue, plan, "ECLMuPiCNN", ["PXDBackgroundGAN", "PXDMasks"]) == [
        ("PXDBackgroundGAN", ["PXDBackgroundGAN"])]


def test_production_reading_a_payload_it_does_not_wait_for_is_an_error():
    catalogue = discover(REPO / "calibrations")
    plan = build_plan(catalogue)
    check_production_reads(catalogue, plan, list(PRODUCTION_READS), "CdstProduction:r00001")  # cDST payloads too
    with pytest.raises(UndeclaredDependencyError) as info:
        check_production_reads(catalogue, plan, ["CDCTimeZeros", "PXDBackgroundGAN"], "CdstProduction:r00001")
    assert str(info.value).startswith("CdstProduction:r00001 read payloads of raw calibrations it does not wait "
                                      "for: PXDBackgroundGAN (produced by PXDBackgroundGAN)")
