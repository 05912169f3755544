"""A directory of 22 prompt scripts written in the idioms of basf2's current ``prompt/calibrations/`` is read in one
run and planned into the right stages and groups; a directory with five different mistakes gets five messages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from b2luca.catalogue import CatalogueError, build_plan, discover

HEADER = '''\
##########################################################################
# basf2 (Belle II Analysis Software Framework)                           #
# Author: The Belle II Collaboration                                     #
##########################################################################
'''

DT = "INPUT_DATA_FILTERS['Data Tag']"
GOOD = 'INPUT_DATA_FILTERS["Data Quality Tag"]["Good Or Recoverable"]'

#: stem -> (name, subsystem, formats, {input name: filter list source}, [(dependency stem, import form)], preamble)
SCRIPTS: dict[str, tuple] = {
    "caf_cdc": ("CDC Tracking", "cdc", ["raw"],
                {"mumu_tight_or_highm_calib": "[INPUT_DATA_FILTERS['Data Tag']['mumu_tight_or_highm_calib'], "
                                              f"{GOOD}, INPUT_DATA_FILTERS['Magnet']['On']]",
                 "hadron_calib": "[INPUT_DATA_FILTERS['Data Tag']['hadron_calib']] + quality",
                 "cosmic_calib": f"[{DT}['cosmic_calib'], f\"NOT {{INPUT_DATA_FILTERS['Magnet']['Off']}}\"]"},
                [], "quality = [INPUT_DATA_FILTERS['Data Quality Tag']['Good'], INPUT_DATA_FILTERS['Run Type']['physics']]"),
    "caf_svd_time": ("SVDTimeCalibrationsPrompt", "svd", ["raw"],
                     {"hadron_calib": "svd_filters"}, [],
                     f"svd_filters = [{DT}['hadron_calib'], {GOOD}, \"NOT \" + INPUT_DATA_FILTERS['Magnet']['Off']]"),
    "caf_pxd": ("PXDHotPixelMaskCalibrations", "pxd", ["raw"],
                {"physics": f"[{DT}['random_calib'], INPUT_DATA_FILTERS['Beam Energy']['4S'], {GOOD}]",
                 "cosmic": f"[{DT}['cosmic_calib'], 'NOT ' + INPUT_DATA_FILTERS['Run Type']['physics']]"}, [], ""),
    "caf_klm_channel_status": ("KLM channel status", "klm", ["raw"],
                               {"raw_physics": f"[f\"NOT {{{DT}['random_calib']}}\", {GOOD}]",
                                "raw_cosmic": f"[{DT}['cosmic_calib']]"}, [], ""),
    "caf_top_pre": ("TOP_pre", "top", ["raw"],
                    {"bhabha_all_calib": f"[{DT}['bhabha_all_calib'], {GOOD}]"}, [], ""),
    "caf_ecl_autocovariance": ("ecl_autocovariance", "ecl", ["raw"],
                               {"delayedbhabha_calib": f"[{DT}['delayedbhabha_calib']]"}, [], ""),
    "caf_vxdcdc_alignment": ("VXD and CDC Alignment", "alignment", ["raw"],
                             {name: f"[{DT}['{name}']] + quality_flags" for name in
                              ("cosmic_calib", "mumu_tight_or_highm_calib", "hadron_calib", "offip_calib")},
                             [("caf_cdc", "from prompt.calibrations.caf_cdc import settings as cdc_tracking_calibration")],
                             f"quality_flags = [INPUT_DATA_FILTERS['Run Type']['physics'], {GOOD}, "
                             "INPUT_DATA_FILTERS['Magnet']['On']]"),
    "caf_cdc_badwire": ("CDC badwire", "cdc", ["raw"], {"hadron_calib": f"[{DT}['hadron_calib']]"},
                        [("caf_cdc", "from prompt.calibrations.caf_cdc import settings as cdc_calibration")], ""),
    "caf_svd_time_shift": ("SVDTimeShift", "svd", ["RAW"], {"hadron_calib": f"[{DT}['hadron_calib']]"},
                           [("caf_svd_time", "from prompt.calibrations import caf_svd_time")], ""),
    "caf_cdc_mp2": ("CDC MP2", "alignment", ["raw"], {"mumu": f"[{DT}['mumu_tight_or_highm_calib']]"},
                    [("caf_vxdcdc_alignment", "from prompt.calibrations.caf_vxdcdc_alignment import settings as ali")],
                    ""),
    "caf_beamspot": ("BeamSpot Calibrations", "beam", ["cdst"],
                     {"mumu_tight_or_highm_calib": f"[{DT}['mumu_tight_or_highm_calib'], {GOOD}]"},
                     [("caf_vxdcdc_alignment", "from prompt.calibrations.caf_vxdcdc_alignment import settings as "
                                               "vxdcdc_alignment")], ""),
    "caf_boostvector": ("BoostVector calibrations", "beam", ["cdst"],
                        {"mumu_tight_or_highm_calib": f"[{DT}['mumu_tight_or_highm_calib']]"},
                        [("caf_beamspot", "from prompt.calibrations.caf_beamspot import settings as beamspot")], ""),
    "caf_ecms": ("Ecms Calibrations", "beam", ["cdst"],
                 {"hadron4S": f"[{DT}['btocharm_calib'], INPUT_DATA_FILTERS['Beam Energy']['4S']]",
                  "mumu4S": f"[{DT}['mumu_tight_or_highm_calib'], INPUT_DATA_FILTERS['Beam Energy']['4S']]",
                  "mumuOff": f"[{DT}['mumu_tight_or_highm_calib'], INPUT_DATA_FILTERS['Beam Energy']['Continuum']]"},
                 [("caf_boostvector", "from prompt.calibrations.caf_boostvector import settings as boostvector")], ""),
    "caf_ecl_E": ("ecl_energy", "ecl", ["cdst"], {"bhabha_all_calib": f"[{DT}['bhabha_all_calib']]",
                                                  "gamma_gamma_calib": f"[{DT}['gamma_gamma_calib']]"}, [], ""),
    "caf_ecl_time_crystalCrate": ("ECLcrystalTimeCrateCalibration", "ecl", ["cdst"],
                                  {"bhabha_all_calib": f"[{DT}['bhabha_all_calib']]"},
                                  [("caf_ecl_E", "import prompt.calibrations.caf_ecl_E as ecl_energy_module")], ""),
    "eclBhabhaT_calPerRun": ("ecl_t_calibration_per_run", "ecl", ["cdst"],
                             {"delayed": f"[{DT}['delayedbhabha_calib'], {GOOD}]"}, [], ""),
    "caf_top": ("TOP post-tracking calibration", "top", ["cdst"],
                {"bhabha_all_calib": f"[{DT}['bhabha_all_calib']]", "dimuon_skim": f"[{DT}['mumu_tight_or_highm_calib']]"},
                [("caf_top_pre", "from prompt.calibrations.caf_top_pre import settings as top_pre")], ""),
    "caf_klm_alignment": ("KLM alignmnent", "klm", ["cdst"], {"raw_physics": f"[{DT}['mumu_tight_or_highm_calib']]",
                                                              "raw_cosmic": f"[{DT}['cosmic_calib']]"},
                          [("caf_vxdcdc_alignment", "from prompt.calibrations.caf_vxdcdc_alignment import settings as "
                                                    "tracking_alignment")], ""),
    "caf_klm_time": ("KLM time", "klm", ["cdst"], {"raw_physics": f"[{DT}['mumu_tight_or_highm_calib']]"},
                     [("caf_klm_alignment", "from prompt.calibrations.caf_klm_alignment import settings as klm_alignment")],
                     ""),
    "caf_cdcdedx": ("CDCdEdxCalibrations", "cdc", ["cdst"],
                    {"bhabha_all_calib": f"[{DT}['bhabha_all_calib']]", "radmumu_calib": f"[{DT}['radmumu_calib']]"},
                    [("caf_cdc", "from prompt.calibrations.caf_cdc import settings as cdc_tracking_calibration")], ""),
    "caf_arich": ("ARICH channel masks", "arich", ["cdst"], {"hlt_mumu": f"[{DT}['mumu_tight_or_highm_calib']]"},
                  [("caf_cdcdedx", "from prompt.calibrations.caf_cdcdedx import settings as dedx")], ""),
    "caf_svd_dedx": ("SVDdEdxCalibration", "svd", ["cdst"], {"hadron_calib": f"[{DT}['hadron_calib']]"},
                     [("caf_svd_time", "from prompt.calibrations.caf_svd_time import settings as svd_time_calibration")],
                     ""),
}

#: the expected plan: (stage, group) -> names
EXPECTED = {
    ("raw", 0): ["CDC Tracking", "KLM channel status", "PXDHotPixelMaskCalibrations", "SVDTimeCalibrationsPrompt",
                 "TOP_pre", "ecl_autocovariance"],
    ("raw", 1): ["CDC badwire", "SVDTimeShift", "VXD and CDC Alignment"],
    ("raw", 2): ["CDC MP2"],
    ("cdst", 0): ["BeamSpot Calibrations", "CDCdEdxCalibrations", "KLM alignmnent", "SVDdEdxCalibration",
                  "TOP post-tracking calibration", "ecl_energy", "ecl_t_calibration_per_run"],
    ("cdst", 1): ["ARICH channel masks", "BoostVector calibrations", "ECLcrystalTimeCrateCalibration", "KLM time"],
    ("cdst", 2): ["Ecms Calibrations"],
}


def _reference(stem: str, form: str) -> str:
    """The expression naming the imported settings for an import form."""
    if form.startswith("import "):
        return form.split(" as ")[1] + ".settings"
    if " as " in form:
        return form.split(" as ")[1]
    return f"{stem}.settings"


def script_text(stem: str) -> str:
    name, subsystem, formats, inputs, deps, preamble = SCRIPTS[stem]
    lines = [HEADER, f'"""{name}: prompt calibration of the {subsystem.upper()} ({stem}.py)."""', "",
             "import basf2", "from prompt import CalibrationSettings, INPUT_DATA_FILTERS", "from prompt.utils import ExpRun"]
    lines += [form for _, form in deps]
    lines += ["", preamble, "", "#: Tells the automated system some details of this script",
              "settings = CalibrationSettings(",
              f"    name={name!r},", f"    expert_username='{subsystem}_expert',", f"    subsystem={subsystem!r},",
              "    description=__doc__,", f"    input_data_formats={formats!r},",
              f"    input_data_names={list(inputs)!r},",
              "    input_data_filters={" + ", ".join(f"{k!r}: {v}" for k, v in inputs.items()) + "},",
              "    depends_on=[" + ", ".join(_reference(s, f) for s, f in deps) + "],",
              "    expert_config={'max_events': 10000, 'iov_boundaries': [[26, 1]]},",
              f"    produced_payloads=[{(stem.replace('caf_', '').title() + 'Payload')!r}])",
              "", "", "def get_calibrations(input_data, **kwargs):", "    from caf.framework import Calibration",
              "    return []", ""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def prompt_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("prompt") / "calibrations"
    directory.mkdir()
    for stem in SCRIPTS:
        (directory / f"{stem}.py").write_text(script_text(stem))
    # a local-calibration payload name as basf2 allows it
    text = (directory / "caf_svd_time.py").read_text()
    (directory / "caf_svd_time.py").write_text(text.replace("produced_payloads=[", "produced_payloads=['SVDGlobalXMLFile.xml', "))
    (directory / "printBeamSpotSteerings.py").write_text(HEADER + '"""Prints steering files."""\nimport basf2\n')
    (directory / "_helpers.py").write_text("def helper():\n    return 1\n")
    (directory / "validations").mkdir()
    (directory / "validations" / "beamspot.py").write_text(textwrap.dedent('''\
        """Validation of the beam spot."""
        from prompt import ValidationSettings
        settings = ValidationSettings(name="BeamSpot Calibrations", description=__doc__,
                                      download_files=["stdout"], expert_config={"chunk_size": 100})

        def run_validation(job_path, input_data_path, requested_iov, expert_config):
            pass
        '''))
    return directory


def test_twenty_two_real_scripts_read_in_one_run_and_planned(prompt_dir):
    catalogue = discover(prompt_dir)
    assert len(catalogue) == 22
    plan = build_plan(catalogue)
    found = {(stage.name, level): list(group) for stage in plan.stages if stage.name != "cdst_production"
             for level, group in enumerate(stage.groups)}
    assert found == EXPECTED
    svd = catalogue["SVDTimeCalibrationsPrompt"].settings
    assert svd.input_data_filters["hadron_calib"] == ("hadron_calib", "Good Or Recoverable", "NOT Off")
    assert svd.produced_payloads[0] == "SVDGlobalXMLFile.xml"
    klm = catalogue["KLM channel status"].settings
    assert klm.input_data_filters["raw_physics"] == ("NOT random_calib", "Good Or Recoverable")
    cdc = catalogue["CDC Tracking"].settings
    assert cdc.input_data_filters["cosmic_calib"] == ("cosmic_calib", "NOT Off")
    assert cdc.description.startswith("CDC Tracking: prompt calibration")  # __doc__
    assert catalogue["ECLcrystalTimeCrateCalibration"].depends_on == ("ecl_energy",)  # module-alias import
    assert catalogue["SVDTimeShift"].settings.input_data_formats == frozenset({"raw"})  # lower-cased like basf2
    assert catalogue["BeamSpot Calibrations"].validation_path == prompt_dir / "validations" / "beamspot.py"
    assert [s.path.name for s in catalogue.skipped] == ["printBeamSpotSteerings.py"]


def _break(directory: Path, stem: str, old: str, new: str) -> Path:
    path = directory / f"{stem}.py"
    text = path.read_text()
    assert old in text, (stem, old)
    path.write_text(text.replace(old, new, 1))
    return path


def test_five_mistakes_five_messages_in_one_run(prompt_dir, tmp_path):
    d = tmp_path / "calibrations"
    d.mkdir()
    for path in prompt_dir.glob("*.py"):
        (d / path.name).write_text(path.read_text())
    old_tag = _break(d, "caf_klm_channel_status", "['random_calib']", "['hlt_skim']")  # removed from basf2
    subsystem = _break(d, "caf_top_pre", "subsystem='top'", "subsystem='toppre'")
    missing = _break(d, "caf_klm_time", "caf_klm_alignment import", "caf_klm_alignmnent import")
    call = _break(d, "caf_ecl_E", "expert_config={'max_events': 10000, 'iov_boundaries': [[26, 1]]}",
                  "expert_config=dict(max_events=10000)")
    syntax = _break(d, "caf_cdc_badwire", "import basf2", "import basf2 as")
    with pytest.raises(CatalogueError) as info:
        discover(d)
    lines = str(info.value).splitlines()
    assert len(lines) == 5, lines
    text = "\n".join(lines)
    assert f"{old_tag}:" in text and "unknown filter 'hlt_skim' in INPUT_DATA_FILTERS['Data Tag']" in text
    assert f"{subsystem}:" in text and "subsystem 'toppre' is not one of basf2's subsystems" in text
    assert f"{missing}:" in text and "missing dependency: 'KLM time'" in text
    assert f"{call}:" in text and "unsupported construct in the settings: function call" in text
    assert f"{syntax}:" in text and "syntax error" in text
    # the scripts depending on the broken ones (TOP post-tracking, ECL time) are not blamed as well
    assert "caf_top.py" not in text and "caf_ecl_time_crystalCrate" not in text


def test_newer_release_filters_from_the_yaml(tmp_path):
    d = tmp_path / "calibrations"
    d.mkdir()
    (d / "caf_new.py").write_text(textwrap.dedent('''\
        """New."""
        from prompt import CalibrationSettings, INPUT_DATA_FILTERS
        settings = CalibrationSettings(name="New", expert_username="x", subsystem="ecl", description=__doc__,
                                       input_data_formats=["cdst"], input_data_names=["b"],
                                       input_data_filters={"b": [INPUT_DATA_FILTERS["Data Tag"]["bhabha_combined_calib"]]})
        '''))
    with pytest.raises(CatalogueError, match="unknown filter 'bhabha_combined_calib'"):
        discover(d)
    catalogue = discover(d, {"Data Tag": ["bhabha_combined_calib"]})
    assert catalogue["New"].settings.input_data_filters == {"b": ("bhabha_combined_calib",)}


def test_vocabulary_taken_from_basf2_when_importable(tmp_path):
    fake = tmp_path / "site" / "prompt"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(textwrap.dedent('''\
        INPUT_DATA_FILTERS = {"Data Tag": {"future_calib": "future_calib"}, "Magnet": {"On": "On"}}
        class CalibrationSettings:
            allowed_subsystems = frozenset({"pxd", "newdet"})
        '''))
    code = ("from b2luca.catalogue import INPUT_DATA_FILTERS, SUBSYSTEMS; "
            "print(sorted(INPUT_DATA_FILTERS['Data Tag']), sorted(SUBSYSTEMS))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), *sys.path])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['future_calib'] ['newdet', 'pxd']"
    # without basf2: the built-in copy of the current release
    from b2luca.catalogue.prompt_api import BUILTIN_INPUT_DATA_FILTERS
    assert "delayedbhabha_calib" in BUILTIN_INPUT_DATA_FILTERS["Data Tag"]
    assert "hlt_skim" not in BUILTIN_INPUT_DATA_FILTERS["Data Tag"]
