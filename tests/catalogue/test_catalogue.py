"""Tests of the calibration catalogue: settings checks, static reading of basf2-style scripts, plan."""

from __future__ import annotations

import datetime
import importlib.util
import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from b2luca.catalogue import (
    CDST, CDST_PRODUCTION, INPUT_DATA_FILTERS, RAW, CalibrationInfo, CalibrationSettings, Catalogue,
    CatalogueError, ValidationSettings, build_plan, discover, split_filter,
)
from b2luca.contract import CalibrationJob, Verdict
from b2luca.iov import ExpRun, IoV

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------------------------
# basf2-style scripts, in the style of basf2's calibration/scripts/prompt/calibrations/*.py
# ------------------------------------------------------------------------------------------------
CAF_CDC = '''\
##########################################################################
# basf2 (Belle II Analysis Software Framework)                           #
##########################################################################
"""
cdc_tracking_calibration: CDC tracking calibration (T0, time walk, x-t, space resolution).
Runs on raw data before the cDST production.
"""
import numpy as np
import basf2
from ROOT import Belle2
from prompt import CalibrationSettings, INPUT_DATA_FILTERS
from prompt.utils import ExpRun
from caf.utils import IoV

basf2.B2FATAL("this script must never be executed by the catalogue")

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="CDC Tracking",
                               expert_username="eberthol",
                               subsystem="cdc",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=["mumu_tight_or_highm_calib", "hadron_calib", "cosmic_calib"],
                               input_data_filters={"mumu_tight_or_highm_calib":
                                                   [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"],
                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                                                    INPUT_DATA_FILTERS["Magnet"]["On"]],
                                                   "hadron_calib":
                                                   [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"],
                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                                                    INPUT_DATA_FILTERS["Magnet"]["On"]],
                                                   "cosmic_calib":
                                                   [INPUT_DATA_FILTERS["Data Tag"]["cosmic_calib"],
                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                                                    "NOT " + INPUT_DATA_FILTERS["Magnet"]["Off"]]},
                               depends_on=[],
                               expert_config={
                                   "max_files_per_run": 10,
                                   "min_events_per_file": 500,
                                   "max_events_per_calibration": 200000,
                                   "payload_boundaries": [],
                                   "fractions": [0.5, -1],
                                   "backend_args": {"request_memory": "4 GB"},
                                   "calib_mode": None,
                                   "dry_run": False},
                               produced_payloads=["CDCTimeZeros", "CDCTimeWalks", "CDCXtRelations"])


def get_calibrations(input_data, **kwargs):
    import basf2
    from prompt.utils import filter_by_max_files_per_run
    from caf.framework import Calibration
    expert_config = kwargs.get("expert_config")
    requested_iov = kwargs.get("requested_iov", None)
    output_iov = IoV(requested_iov.exp_low, requested_iov.run_low, -1, -1)
    files = filter_by_max_files_per_run(input_data["hadron_calib"], expert_config["max_files_per_run"])
    cal = Calibration("CDC_T0", collector="CDCCalibrationCollector", input_files=list(files))
    basf2.B2INFO(f"IoV {output_iov}")
    return [cal]
'''

CAF_SVD = '''\
"""SVD time calibration."""
import basf2
from prompt import CalibrationSettings, INPUT_DATA_FILTERS

settings = CalibrationSettings(name="SVD Time",
                               expert_username="svd_expert",
                               subsystem="svd",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=["hadron_calib"],
                               input_data_filters={"hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"],
                                                                    INPUT_DATA_FILTERS["Run Type"]["physics"],
                                                                    INPUT_DATA_FILTERS["Magnet"]["On"]]},
                               expert_config={"timeAlgorithms": ["CoG3", "ELS3", "CoG6"], "max_events": 10000},
                               produced_payloads=["SVDTimeOffsets"])


def get_calibrations(input_data, **kwargs):
    import basf2
    return []
'''

# no produced_payloads, module-level names, list '+', as in caf_vxdcdc_alignment.py
CAF_VXDCDC = '''\
# -*- coding: utf-8 -*-

"""

Full Simultaneous Global and Local VXD and CDC alignment with Millepede II

"""

import basf2
import ROOT

from prompt import CalibrationSettings, INPUT_DATA_FILTERS
from prompt.calibrations.caf_cdc import settings as cdc_tracking_calibration
from prompt.utils import events_in_basf2_file
from caf import strategies
import millepede_calibration as mpc

collection_names = ["cosmic", "hadron", "mumu", "offip"]

default_config = {
    "cosmic.max_processed_events_per_file": 4000,
    "hadron.max_processed_events_per_file": 1000,
    "stage1.method": "fullLAPACK"
}

quality_flags = [INPUT_DATA_FILTERS["Run Type"]["physics"],
                 INPUT_DATA_FILTERS["Data Quality Tag"]["Good Or Recoverable"],
                 INPUT_DATA_FILTERS["Magnet"]["On"]]

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="Full VXD and CDC Alignment",
                               expert_username="bilkat",
                               subsystem="alignment",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=collection_names,
                               input_data_filters={
                                   "cosmic": [INPUT_DATA_FILTERS["Data Tag"]["cosmic_calib"]] + quality_flags,
                                   "mumu":
                                   [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"]] + quality_flags,
                                   "hadron": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]] + quality_flags,
                                   "offip": [INPUT_DATA_FILTERS["Data Tag"]["offip_calib"]] + quality_flags
                               },

                               expert_config=default_config,
                               depends_on=[cdc_tracking_calibration])


def create_prompt(files, cfg):
    return mpc.create(name="VXDCDCalignment_prompt", dbobjects=["VXDAlignment", "CDCAlignment"])


def get_calibrations(input_data, **kwargs):
    cfg = kwargs["expert_config"]
    files = {name: list(input_data[name].keys()) for name in collection_names}
    return [create_prompt(files, cfg)]
'''

CAF_BEAMSPOT = '''\
"""
Airflow script to perform BeamSpot calibration.
"""

from prompt import CalibrationSettings, INPUT_DATA_FILTERS
from prompt.calibrations.caf_vxdcdc_alignment import settings as caf_vxdcdc_alignment

#: Tells the automated system some details of this script
settings = CalibrationSettings(
    name="BeamSpot Calibrations",
    expert_username="zlatko",
    subsystem="beam",
    description=__doc__,
    input_data_formats=["cdst"],
    input_data_names=["mumu_tight_or_highm_calib"],
    input_data_filters={
        "mumu_tight_or_highm_calib": [
            INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"],
            INPUT_DATA_FILTERS["Run Type"]["physics"],
            INPUT_DATA_FILTERS["Magnet"]["On"]]},
    depends_on=[caf_vxdcdc_alignment],
    expert_config={
        "outerLoss": "pow(rawTime - 2.0, 2) + 10 * pow(maxGap, 2)",
        "innerLoss": "pow(rawTime - 0.5, 2) + 10 * pow(maxGap, 2)"},
    produced_payloads=["BeamSpot"])


def get_calibrations(input_data, **kwargs):
    from ROOT.Belle2 import BeamSpotAlgorithm
    from caf.framework import Calibration
    return [Calibration("BeamSpot", algorithms=BeamSpotAlgorithm())]
'''

CAF_ECMS = '''\
"""Airflow script for the determination of the invariant mass of the collisions."""

from prompt import CalibrationSettings, INPUT_DATA_FILTERS
from prompt.calibrations.caf_beamspot import settings as caf_beamspot

settings = CalibrationSettings(
    name="Ecms Calibrations",
    expert_username="zlatko",
    subsystem="beam",
    description=__doc__,
    input_data_formats=["cdst"],
    input_data_names=["hadron_calib", "mumu_tight_or_highm_calib"],
    input_data_filters={
        "hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"],
                         INPUT_DATA_FILTERS["Beam Energy"]["4S"],
                         INPUT_DATA_FILTERS["Run Type"]["physics"]],
        "mumu_tight_or_highm_calib": [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"],
                                      INPUT_DATA_FILTERS["Run Type"]["physics"]]},
    depends_on=[caf_beamspot],
    expert_config={"runHadB": True, "eCMSmumuSpread": 5.2e-3, "eCMSmumuShift": 10e-3, "runMuMu": True},
    produced_payloads=["CollisionInvariantMass"])


def get_calibrations(input_data, **kwargs):
    import basf2
    return []
'''

VALIDATION_BEAMSPOT = """\
'''
Validation of the Beam Spot calibration
'''

import basf2
from prompt import ValidationSettings
import ROOT

#: Tells the automated system some details of this script
settings = ValidationSettings(name='BeamSpot Calibrations',
                              description=__doc__,
                              download_files=['stdout'],
                              expert_config={})


def run_validation(job_path, input_data_path, requested_iov, expert_config):
    import matplotlib.pyplot as plt
    plt.savefig("plots/xIP.png")


if __name__ == "__main__":
    import sys
    run_validation(*sys.argv[1:])
"""

HELPER = '''\
"""Shared helpers; not a calibration."""
import basf2


def pre_collector(path):
    return path
'''


def write(directory: Path, name: str, text: str) -> Path:
    """Write one script (dedented) and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def basf2_dir(tmp_path: Path) -> Path:
    """A directory of basf2-style prompt scripts (written out of order on purpose)."""
    d = tmp_path / "calibrations"
    write(d, "caf_ecms.py", CAF_ECMS)
    write(d, "caf_beamspot.py", CAF_BEAMSPOT)
    write(d, "caf_vxdcdc_alignment.py", CAF_VXDCDC)
    write(d, "caf_cdc.py", CAF_CDC)
    write(d, "caf_svd_time.py", CAF_SVD)
    write(d, "helpers.py", HELPER)
    write(d, "_broken_private.py", "this is not python (\n")
    write(d, "validations/beamspot.py", VALIDATION_BEAMSPOT)
    return d


def settings_kwargs(**over):
    """Minimal valid CalibrationSettings keyword arguments."""
    kwargs = dict(name="Cal", expert_username="expert", subsystem="cdc", description="d",
                  input_data_formats=["raw"], input_data_names=["hadron_calib"],
                  input_data_filters={"hadron_calib": ["hadron_calib", "Good", "NOT Off"]},
                  expert_config={"a": 1}, produced_payloads=["P"])
    kwargs.update(over)
    return kwargs


# ------------------------------------------------------------------------------------------------
# INPUT_DATA_FILTERS and CalibrationSettings checks
# ------------------------------------------------------------------------------------------------
def test_input_data_filters_shape_mirrors_basf2():
    assert set(INPUT_DATA_FILTERS) == {"Magnet", "Beam Energy", "Run Type", "Data Tag", "Data Quality Tag"}
    assert INPUT_DATA_FILTERS["Magnet"]["On"] == "On"
    assert INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"] == "hadron_calib"
    for category, values in INPUT_DATA_FILTERS.items():
        assert all(key == value for key, value in values.items()), category
    assert {"On", "Off", "Either"} == set(INPUT_DATA_FILTERS["Magnet"])
    assert {"beam", "cosmic", "debug", "null", "physics"} == set(INPUT_DATA_FILTERS["Run Type"])
    assert {"No Beam", "4S", "Continuum", "Scan"} <= set(INPUT_DATA_FILTERS["Beam Energy"])
    assert {"bhabha_all_calib", "cosmic_calib", "gamma_gamma_calib", "hadron_calib", "mumu_tight_or_highm_calib",
            "offip_calib", "radmumu_calib", "random_calib", "single_gamma_mc"} <= set(INPUT_DATA_FILTERS["Data Tag"])
    assert {"Good", "Bad For Alignment", "Good Or Recoverable", "Good Shifter"} <= \
        set(INPUT_DATA_FILTERS["Data Quality Tag"])
    assert split_filter("NOT Off") == (True, "Magnet", "Off")
    assert split_filter("Good Or Recoverable") == (False, "Data Quality Tag", "Good Or Recoverable")
    with pytest.raises(ValueError, match="unknown input data filter 'NOT Sideways'"):
        split_filter("NOT Sideways")


def test_settings_normalised_like_basf2():
    s = CalibrationSettings(**settings_kwargs(input_data_formats=["RAW", "cdst"], depends_on=None,
                                              input_data_filters=None, expert_config=None))
    assert s.input_data_formats == frozenset({"raw", "cdst"})
    assert s.input_data_names == frozenset({"hadron_calib"})
    assert s.input_data_filters == {} and s.expert_config == {} and s.depends_on == ()
    assert s.stage == RAW
    dep = CalibrationSettings(**settings_kwargs(name="Other", input_data_formats=["mdst"], depends_on=[s]))
    assert dep.stage == CDST and dep.depends_on_names == ("Cal",)
    assert json.loads(dep.json_dumps())["depends_on"] == ["Cal"]
    with pytest.raises(Exception):
        s.name = "x"  # frozen


@pytest.mark.parametrize("over, message", [
    (dict(name="x" * 65), "longer than 64 characters"),
    (dict(name=""), "name must be a non-empty string"),
    (dict(expert_username=""), "expert_username must be a non-empty string"),
    (dict(input_data_formats=[]), "at least one input data format"),
    (dict(input_data_formats=["raw", "dst"]), r"\['dst'\], not in the allowed formats"),
    (dict(input_data_formats="raw"), "input_data_formats must be a list of strings"),
    (dict(input_data_names=[]), "at least one input data name"),
    (dict(input_data_filters={"mumu": ["Good"]}), "keys \\['mumu'\\] don't match the input_data_names"),
    (dict(input_data_filters={"hadron_calib": ["Good", "Sideways"]}), "unknown input data filter 'Sideways'"),
    (dict(input_data_filters={"hadron_calib": ["NOT Sideways"]}), "unknown input data filter 'NOT Sideways'"),
    (dict(input_data_filters={"hadron_calib": "Good"}), "must be a list of filters"),
    (dict(expert_config={"when": datetime.date(2024, 1, 1)}), r"expert_config\['when'\] is not JSON-serialisable"),
    (dict(expert_config={"s": {1, 2}}), r"expert_config\['s'\] is not JSON-serialisable"),
    (dict(expert_config=[1, 2]), "expert_config must be a dict"),
    (dict(depends_on=["CDC"]), "depends_on must contain CalibrationSettings"),
    (dict(produced_payloads=[""]), "produced_payloads must contain non-empty strings"),
    (dict(subsystem="beamspot"), "subsystem 'beamspot' is not one of basf2's subsystems"),
])
def test_settings_checks(over, message):
    with pytest.raises(ValueError, match=message) as info:
        CalibrationSettings(**settings_kwargs(**over))
    assert "CalibrationSettings" in str(info.value)


def test_validation_settings():
    v = ValidationSettings(name="Cal", description=None, download_files=["stdout"], expert_config={"x": [1]})
    assert v.download_files == ("stdout",) and v.description == ""
    with pytest.raises(ValueError, match="longer than 64"):
        ValidationSettings(name="y" * 65, description="")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        ValidationSettings(name="Cal", description="", expert_config={"f": object()})


# ------------------------------------------------------------------------------------------------
# static reading of basf2-style scripts
# ------------------------------------------------------------------------------------------------
def test_basf2_scripts_read_without_basf2_and_ordered(basf2_dir):
    assert importlib.util.find_spec("basf2") is None  # the scripts' imports could not even be satisfied
    cat = discover(basf2_dir)
    assert "basf2" not in sys.modules and "prompt" not in sys.modules
    assert sorted(cat.names) == sorted(["CDC Tracking", "SVD Time", "Full VXD and CDC Alignment",
                                        "BeamSpot Calibrations", "Ecms Calibrations"])
    cdc = cat["CDC Tracking"].settings
    assert cdc.description.strip().startswith("cdc_tracking_calibration: CDC tracking calibration")
    assert cdc.input_data_filters["cosmic_calib"] == ("cosmic_calib", "Good", "NOT Off")
    assert cdc.expert_config["fractions"] == [0.5, -1] and cdc.expert_config["calib_mode"] is None
    assert cdc.produced_payloads == ("CDCTimeZeros", "CDCTimeWalks", "CDCXtRelations")
    assert cat["CDC Tracking"].functions >= {"get_calibrations"}

    align = cat["Full VXD and CDC Alignment"]
    assert align.settings.subsystem == "alignment" and align.settings.produced_payloads == ()
    assert align.settings.input_data_names == {"cosmic", "hadron", "mumu", "offip"}
    assert align.settings.input_data_filters["offip"] == ("offip_calib", "physics", "Good Or Recoverable", "On")
    assert align.settings.expert_config["stage1.method"] == "fullLAPACK"
    assert align.depends_on == ("CDC Tracking",)
    assert align.settings.depends_on[0] is cdc  # real settings objects, as basf2 has them

    bs = cat["BeamSpot Calibrations"]
    assert bs.stage == CDST and bs.validation_path == basf2_dir / "validations" / "beamspot.py"
    assert bs.validation.download_files == ("stdout",)
    assert "run_validation" in bs.validation_functions
    assert cat["CDC Tracking"].validation_path is None

    plan = build_plan(cat)
    assert [s.name for s in plan.stages] == [RAW, CDST_PRODUCTION, CDST]
    assert plan.stages[0].groups == [["CDC Tracking", "SVD Time"], ["Full VXD and CDC Alignment"]]
    assert plan.stages[1].groups == []
    assert plan.stages[2].groups == [["BeamSpot Calibrations"], ["Ecms Calibrations"]]
    assert plan.group_of("Full VXD and CDC Alignment") == (RAW, 1)
    assert plan.group_of("Ecms Calibrations") == (CDST, 1)
    assert plan.dependents("CDC Tracking") == ["Full VXD and CDC Alignment", "BeamSpot Calibrations",
                                               "Ecms Calibrations"]
    assert plan.dependents("SVD Time") == []
    assert plan.dependencies("Ecms Calibrations") == ["CDC Tracking", "Full VXD and CDC Alignment",
                                                      "BeamSpot Calibrations"]
    assert plan.order.index("CDC Tracking") < plan.order.index("Full VXD and CDC Alignment") \
        < plan.order.index("BeamSpot Calibrations") < plan.order.index("Ecms Calibrations")


def test_static_reading_equals_running_a_native_script(tmp_path, monkeypatch):
    """The evaluator gives exactly what Python gives when a native script is executed."""
    d = tmp_path / "calibrations"
    write(d, "first.py", '''\
        """First calibration."""
        from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS
        settings = CalibrationSettings(name="First", expert_username="a", subsystem="example", description=__doc__,
                                       input_data_formats=["raw"], input_data_names=["x"],
                                       input_data_filters={"x": [INPUT_DATA_FILTERS["Data Tag"]["random_calib"]]},
                                       produced_payloads=["FirstPayload"])
        ''')
    write(d, "second.py", '''\
        """Second calibration,
        with a long description."""
        import b2luca.catalogue as cat
        from calibrations.first import settings as first_settings
        tags = [cat.INPUT_DATA_FILTERS["Data Tag"]["bhabha_all_calib"]]
        neg = "NOT " + cat.INPUT_DATA_FILTERS["Beam Energy"]["Continuum"]
        config = {"nested": {"list": [1, 2.5, -3, True, None], "t": (1, 2)}, "s": "a" + "b"}
        config = {"rebound": config}
        settings = cat.CalibrationSettings(name="Second", expert_username="b", subsystem="ecl",
                                           description=__doc__, input_data_formats=("cdst", "MDST"),
                                           input_data_names={"y"}, input_data_filters={"y": tags + [neg]},
                                           depends_on=[first_settings], expert_config=config)
        ''')
    static = discover(d)
    for name in [m for m in sys.modules if m == "calibrations" or m.startswith("calibrations.")]:
        sys.modules.pop(name)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, stem in (("First", "first"), ("Second", "second")):
        module = importlib.import_module(f"calibrations.{stem}")
        assert static[name].settings == module.settings
    second = static["Second"].settings
    assert second.expert_config == {"rebound": {"nested": {"list": [1, 2.5, -3, True, None], "t": (1, 2)}, "s": "ab"}}
    assert second.input_data_filters == {"y": ("bhabha_all_calib", "NOT Continuum")}
    for stem in ("first", "second"):
        sys.modules.pop(f"calibrations.{stem}", None)
    sys.modules.pop("calibrations", None)


@pytest.mark.parametrize("import_line, alias", [
    ("from prompt.calibrations.caf_cdc import settings as cdc", "cdc"),
    ("from calibrations.caf_cdc import settings as cdc", "cdc"),
    ("from .caf_cdc import settings as cdc", "cdc"),
    ("from prompt.calibrations import caf_cdc", "caf_cdc.settings"),
    ("from . import caf_cdc", "caf_cdc.settings"),
    ("import prompt.calibrations.caf_cdc as cdcmod", "cdcmod.settings"),
    ("import prompt.calibrations.caf_cdc", "prompt.calibrations.caf_cdc.settings"),
])
def test_dependency_import_forms(tmp_path, import_line, alias):
    d = tmp_path / "cals"
    write(d, "caf_cdc.py", CAF_CDC)
    write(d, "dependent.py", f'''\
        """Dependent."""
        from prompt import CalibrationSettings
        {import_line}
        settings = CalibrationSettings(name="Dep", expert_username="x", subsystem="example", description=__doc__,
                                       input_data_formats=["raw"], input_data_names=["a"], depends_on=[{alias}])
        ''')
    cat = discover(d)
    assert cat["Dep"].depends_on == ("CDC Tracking",)
    assert build_plan(cat).group_of("Dep") == (RAW, 1)


UNSUPPORTED = [
    ("expert_config=make_config()", "function call", 6),
    ("expert_config=dict(a=1)", "function call", 6),
    ("expert_config={'when': f'{3:4d}'}", "f-string with a format specification", 6),
    ("expert_config=np.zeros", "'numpy.zeros' is imported from another module", 6),
    ("expert_config={'k': [*LIST[0]]}", "'\\*' unpacking of int", 6),
    ("expert_config={'k': 2 * 3}", "operator Mult", 6),
    ("expert_config={'k': 'a' + 1}", "'\\+' of str and int", 6),
    ("expert_config={'k': LIST[2]}", "subscript \\[2\\] of a list that has no such item", 6),
    ("expert_config=INPUT_DATA_FILTERS", "INPUT_DATA_FILTERS used without", 6),
]


@pytest.mark.parametrize("argument, what, line", UNSUPPORTED)
def test_unsupported_construct_names_script_and_line(tmp_path, argument, what, line):
    d = tmp_path / "cals"
    path = write(d, "odd.py", f'''\
        """Odd."""
        import numpy as np
        from prompt import CalibrationSettings, INPUT_DATA_FILTERS
        LIST = [1, 2]
        settings = CalibrationSettings(name="Odd", expert_username="x", subsystem="example", description=__doc__,
                                       {argument},
                                       input_data_formats=["raw"], input_data_names=["a"])
        ''')
    with pytest.raises(CatalogueError) as info:
        discover(d)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: ")
    assert re.search(what, message), message


def test_unreadable_module_level_name_points_at_both_lines(tmp_path):
    d = tmp_path / "cals"
    path = write(d, "names.py", '''\
        """Names."""
        from prompt import CalibrationSettings, INPUT_DATA_FILTERS
        from prompt.utils import quality
        flags = quality("Good")
        extra = [1]
        extra += [2]
        settings = CalibrationSettings(name="N", expert_username="x", subsystem="example", description=__doc__,
                                       input_data_formats=["raw"], input_data_names=["a"],
                                       input_data_filters={"a": flags})
        ''')
    with pytest.raises(CatalogueError) as info:
        discover(d)
    original = path.read_text()
    message = str(info.value)
    assert message.startswith(f"{path}:9: name 'flags' cannot be read statically (bound at line 4)")
    assert f"{path}:4: unsupported construct in the settings: function call" in message

    write(d, "names.py", original.replace('{"a": flags}', '{"a": []}, expert_config={"e": extra}'))
    with pytest.raises(CatalogueError, match=r"names\.py:9: name 'extra' cannot be read statically "
                                             r"\(bound at line 6\).*AugAssign"):
        discover(d)

    write(d, "names.py", original.replace('{"a": flags}', '{"a": [undefined]}'))
    with pytest.raises(CatalogueError, match=r"names\.py:9: name 'undefined' is not bound at module level"):
        discover(d)


def test_unknown_filter_key_names_line_and_known_keys(tmp_path):
    d = tmp_path / "cals"
    # basf2's real caf_vxdcdc_alignment.py once used a data tag missing from INPUT_DATA_FILTERS
    path = write(d, "caf_vxdcdc_alignment.py", CAF_VXDCDC.replace("mumu_tight_or_highm_calib", "mumutight_calib"))
    write(d, "caf_cdc.py", CAF_CDC)
    with pytest.raises(CatalogueError) as info:
        discover(d)
    lines = CAF_VXDCDC.splitlines()
    line = 1 + lines.index(next(text for text in lines if "mumu_tight_or_highm_calib" in text))
    assert str(info.value).startswith(f"{path}:{line}: unknown filter 'mumutight_calib' in "
                                      f"INPUT_DATA_FILTERS['Data Tag']; known: 'bhabha_all_calib'")


def test_invalid_settings_in_script_names_script_and_line(tmp_path):
    d = tmp_path / "cals"
    path = write(d, "bad.py", '''\
        """Bad."""
        from prompt import CalibrationSettings, INPUT_DATA_FILTERS

        settings = CalibrationSettings(name="Bad", expert_username="x", subsystem="example", description=__doc__,
                                       input_data_formats=["raw"], input_data_names=["a", "b"],
                                       input_data_filters={"a": [INPUT_DATA_FILTERS["Magnet"]["On"]]})
        ''')
    with pytest.raises(CatalogueError, match=rf"^{path}:4: invalid CalibrationSettings: .*don't match"):
        discover(d)
    write(d, "bad.py", path.read_text().replace('description=__doc__', 'descr=__doc__'))
    with pytest.raises(CatalogueError, match=r"bad\.py:4: invalid CalibrationSettings: .*unexpected keyword "
                                             r"argument 'descr'"):
        discover(d)
    write(d, "bad.py", '"""x"""\nfrom prompt import CalibrationSettings\nsettings = build()\n')
    with pytest.raises(CatalogueError, match=r"bad\.py:3: unsupported construct.*'settings' is not built by "
                                             r"CalibrationSettings\(...\)"):
        discover(d)
    write(d, "bad.py", '"""x"""\nfrom prompt import CalibrationSettings\nsettings = [1]\n')
    with pytest.raises(CatalogueError, match=r"bad\.py:3: unsupported construct.*must be assigned a "
                                             r"CalibrationSettings"):
        discover(d)
    write(d, "bad.py", '"""x"""\nfrom prompt import CalibrationSettings\n')
    with pytest.raises(CatalogueError, match=r"bad\.py: imports CalibrationSettings but has no module-level"):
        discover(d)
    write(d, "bad.py", 'def broken(:\n')
    with pytest.raises(CatalogueError, match=r"bad\.py:1: syntax error"):
        discover(d)


# ------------------------------------------------------------------------------------------------
# graph errors
# ------------------------------------------------------------------------------------------------
def script(name: str, fmt: str = "raw", deps: tuple[str, ...] = ()) -> str:
    """A minimal basf2-style script; ``deps`` are script stems it depends on."""
    imports = "\n".join(f"from prompt.calibrations.{d} import settings as {d}_settings" for d in deps)
    return (f'"""{name}."""\nfrom prompt import CalibrationSettings\n{imports}\n'
            f'settings = CalibrationSettings(name="{name}", expert_username="x", subsystem="example",\n'
            f'                               description=__doc__,\n'
            f'                               input_data_formats=["{fmt}"], input_data_names=["a"],\n'
            f'                               depends_on=[{", ".join(d + "_settings" for d in deps)}])\n')


def test_cycle_is_printed_with_scripts(tmp_path):
    d = tmp_path / "cals"
    a = write(d, "a.py", script("A", deps=("b",)))
    b = write(d, "b.py", script("B", deps=("c",)))
    c = write(d, "c.py", script("C", deps=("a",)))
    write(d, "d.py", script("D", deps=("a",)))
    with pytest.raises(CatalogueError) as info:
        discover(d)
    assert str(info.value) == f"dependency cycle: A ({a}:3) -> B ({b}:3) -> C ({c}:3) -> A"  # D is not blamed
    write(d, "e.py", script("E", deps=("e",)))
    with pytest.raises(CatalogueError, match=r"dependency cycle: E \(.*e\.py:3\) -> E"):
        discover(d)


def test_cycle_in_build_plan(tmp_path):
    # settings objects cannot form a cycle, but names can: A depends on an older "B" that depends on nothing
    old_b = CalibrationSettings(**settings_kwargs(name="B"))
    a = CalibrationSettings(**settings_kwargs(name="A", depends_on=[old_b]))
    b = CalibrationSettings(**settings_kwargs(name="B", depends_on=[a]))
    cat = Catalogue([CalibrationInfo(a, Path("a.py")), CalibrationInfo(b, Path("b.py"))])
    with pytest.raises(CatalogueError, match=r"dependency cycle: A \(a\.py\) -> B \(b\.py\) -> A \(a\.py\)"):
        build_plan(cat)


def test_missing_dependency(tmp_path):
    d = tmp_path / "cals"
    a = write(d, "a.py", script("A", deps=("caf_nope",)))
    with pytest.raises(CatalogueError) as info:
        discover(d)
    message = str(info.value)
    assert message.startswith(f"{a}:3: missing dependency: 'A' depends on "
                              f"`from prompt.calibrations.caf_nope import settings as caf_nope_settings`")
    assert f"{d / 'caf_nope.py'} does not exist" in message
    write(d, "helper.py", '"""no settings"""\nimport basf2\n')
    write(d, "a.py", script("A", deps=("helper",)))
    with pytest.raises(CatalogueError, match=r"helper\.py declares no `settings = CalibrationSettings"):
        discover(d)
    # and in build_plan, for a catalogue put together by hand
    dep = CalibrationSettings(**settings_kwargs(name="Dep"))
    user = CalibrationSettings(**settings_kwargs(name="User", depends_on=[dep]))
    with pytest.raises(CatalogueError, match=r"missing dependency: 'User' \(u\.py\) depends on 'Dep', "
                                             r"which is not in the catalogue"):
        build_plan(Catalogue([CalibrationInfo(user, Path("u.py"))]))


def test_duplicate_name_names_both_scripts(tmp_path):
    d = tmp_path / "cals"
    one = write(d, "one.py", script("Same"))
    two = write(d, "two.py", script("Same", fmt="cdst"))
    with pytest.raises(CatalogueError) as info:
        discover(d)
    assert str(info.value) == f"duplicate calibration name 'Same': {one}:4 and {two}:4"


def test_raw_depending_on_cdst(tmp_path):
    d = tmp_path / "cals"
    cdst = write(d, "producer.py", script("Producer", fmt="cdst"))
    raw = write(d, "consumer.py", script("Consumer", fmt="raw", deps=("producer",)))
    cat = discover(d)
    with pytest.raises(CatalogueError) as info:
        build_plan(cat)
    assert str(info.value) == (f"raw calibration 'Consumer' ({raw}) depends on cdst calibration 'Producer' "
                               f"({cdst}); raw calibrations run before cDST production")


def test_select(basf2_dir):
    cat = discover(basf2_dir)
    with pytest.raises(CatalogueError) as info:
        cat.select(["Full VXD and CDC Alignment", "SVD Time"])
    message = str(info.value)
    assert "'Full VXD and CDC Alignment'" in message and "caf_vxdcdc_alignment.py" in message
    assert "depends on 'CDC Tracking'" in message and "caf_cdc.py" in message and "not selected" in message
    with pytest.raises(CatalogueError, match="unknown calibration\\(s\\) 'Nope'.*known: "):
        cat.select(["Nope"])
    sub = cat.select(["CDC Tracking", "Full VXD and CDC Alignment"])
    assert sub.names == ["CDC Tracking", "Full VXD and CDC Alignment"]
    plan = build_plan(sub)
    assert plan.stages[0].groups == [["CDC Tracking"], ["Full VXD and CDC Alignment"]]
    assert plan.stages[2].groups == []
    assert cat.select(None) is cat


def test_validation_matching_errors(basf2_dir):
    write(basf2_dir, "validations/typo.py", VALIDATION_BEAMSPOT.replace("BeamSpot Calibrations", "Beam Spot"))
    with pytest.raises(CatalogueError, match=r"typo\.py:\d+: validation for 'Beam Spot', but no calibration"):
        discover(basf2_dir)
    (basf2_dir / "validations" / "typo.py").write_text(VALIDATION_BEAMSPOT)
    with pytest.raises(CatalogueError, match=r"two validations for 'BeamSpot Calibrations': .*beamspot\.py "
                                             r"and .*typo\.py"):
        discover(basf2_dir)


def test_missing_directory(tmp_path):
    with pytest.raises(CatalogueError, match="does not exist"):
        discover(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# the repository's calibrations/
# ------------------------------------------------------------------------------------------------
def test_repository_calibrations_discover_and_plan(monkeypatch):
    cat = discover(REPO / "calibrations")
    plan = build_plan(cat)
    raw, production, cdst = plan.stages
    assert (raw.name, production.name, cdst.name) == (RAW, CDST_PRODUCTION, CDST)
    assert len(raw.groups) >= 2 and cdst.calibrations
    assert plan.group_of("VXDCDCAlignment") == (RAW, 1)
    assert set(raw.groups[0]) == {"CDCTimeZeros", "SVDTimeOffsets", "PXDHotDeadPixels", "PXDBackgroundGAN"}
    assert set(cdst.calibrations) == {"BeamSpot", "ECLCrystalEnergy", "ECLMuPiCNN"}
    payloads = {p for info in cat for p in info.settings.produced_payloads}
    assert {"CDCTimeZeros", "SVDTimeOffsets", "PXDMasks", "VXDAlignment", "CDCAlignment", "BeamSpot",
            "ECLCrystalEnergy"} <= payloads
    text = plan.as_text()
    for info in cat:
        assert info.name in text and f"@{info.settings.expert_username}" in text
        assert info.settings.description.strip(), info.name
    assert "cDST production" in text
    dot = plan.as_dot()
    assert dot.startswith("digraph") and '"CDCTimeZeros" -> "VXDCDCAlignment";' in dot
    assert '"cDST production" -> "BeamSpot"' in dot
    # the placeholders are real Python: importing them gives the settings read statically
    monkeypatch.syspath_prepend(str(REPO))
    for info in cat:
        spec = importlib.util.spec_from_file_location(f"_b2luca_test_{info.script_path.stem}", info.script_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.settings == info.settings, info.name
    for name in [m for m in sys.modules if m == "calibrations" or m.startswith("calibrations.")]:
        sys.modules.pop(name)


def test_merged_expert_config():
    info = CalibrationInfo(CalibrationSettings(**settings_kwargs(expert_config={"a": 1, "b": [1]})), Path("x.py"))
    assert info.merged_expert_config({"b": [2], "c": "x"}) == {"a": 1, "b": [2], "c": "x"}
    assert info.settings.expert_config == {"a": 1, "b": [1]}
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        info.merged_expert_config({"d": object()})


# ------------------------------------------------------------------------------------------------
# contract
# ------------------------------------------------------------------------------------------------
def test_verdict_round_trip(tmp_path):
    v = Verdict(passed=np.bool_(True), figures={"pull_mean": np.float64(0.25), "n": np.int64(3), "note": "ok",
                                               "bad": float("nan")}, plots=[tmp_path / "a.png"])
    assert v.passed is True and v.figures["n"] == 3.0 and v.plots == [str(tmp_path / "a.png")]
    v.save(tmp_path / "verdict.json")
    back = Verdict.load(tmp_path / "verdict.json")
    assert back.figures == {"pull_mean": 0.25, "n": 3.0, "note": "ok", "bad": "nan"}
    assert back.passed is True and back.plots == v.plots
    with pytest.raises(TypeError, match="figures\\['x'\\] must be a number or a string"):
        Verdict(passed=False, figures={"x": [1]})
    with pytest.raises(TypeError, match="passed must be a bool"):
        Verdict(passed="yes", figures={})
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not a valid verdict"):
        Verdict.load(tmp_path / "broken.json")


def test_calibration_job(tmp_path):
    import logging
    job = CalibrationJob(name="X", input_files={"hadron_calib": [(tmp_path / "f.root", ExpRun(1, 2))]},
                         requested_iov=IoV(1, 2, 1, 9), expert_config={}, output_db=None, database_chain=None,
                         work_dir=tmp_path, log=logging.getLogger("x"))
    assert job.files("hadron_calib") == [tmp_path / "f.root"]
    assert job.output_iov == IoV(1, 2, -1, -1)
    with pytest.raises(KeyError, match="no input data named 'mumu'; known: hadron_calib"):
        job.files("mumu")


def test_misplaced_scripts_and_star_import(tmp_path):
    d = tmp_path / "cals"
    write(d, "star.py", '"""Star."""\nfrom prompt import *\n'
                        'settings = CalibrationSettings(name="Star", expert_username="x", subsystem="example",\n'
                        '                               description=__doc__,\n'
                        '    input_data_formats=["raw"], input_data_names=["a"],\n'
                        '    input_data_filters={"a": [INPUT_DATA_FILTERS["Run Type"]["cosmic"]]})\n')
    assert discover(d)["Star"].settings.input_data_filters == {"a": ("cosmic",)}
    misplaced = write(d, "val.py", VALIDATION_BEAMSPOT)
    with pytest.raises(CatalogueError, match=rf"^{misplaced}:\d+: declares ValidationSettings; validation scripts "
                                             rf"belong in {d / 'validations'}"):
        discover(d)
    misplaced.unlink()
    wrong = write(d, "validations/cal.py", script("Star"))
    with pytest.raises(CatalogueError, match=rf"^{wrong}:\d+: declares CalibrationSettings"):
        discover(d)


def test_plan_text_shows_experts_validation_and_dependencies(basf2_dir):
    text = build_plan(discover(basf2_dir)).as_text()
    assert "stage 1/3: raw calibrations\n  group 0: CDC Tracking, SVD Time\n" in text
    assert "    Full VXD and CDC Alignment: @bilkat; subsystem alignment; input cosmic, hadron, mumu, offip; " \
           "after CDC Tracking; no validation" in text
    assert "    BeamSpot Calibrations: @zlatko; subsystem beam; input mumu_tight_or_highm_calib; payloads " \
           "BeamSpot; after Full VXD and CDC Alignment; validation beamspot.py" in text
    assert "stage 2/3: cDST production" in text and "stage 3/3: cDST calibrations\n  group 0: BeamSpot" in text
