"""The calibration catalogue: settings of prompt calibration scripts, their discovery and the plan.

Calibration scripts follow the basf2 ``prompt`` conventions: each declares, at module level,

    settings = CalibrationSettings(name=..., expert_username=..., subsystem=..., description=__doc__,
                                   input_data_formats=["raw"], input_data_names=[...],
                                   input_data_filters={...}, depends_on=[...], expert_config={...},
                                   produced_payloads=[...])

and a validation script in ``validations/`` declares ``settings = ValidationSettings(...)`` with the
name of the calibration it validates. Scripts written for basf2 (``from prompt import
CalibrationSettings``) and native ones (``from b2luca.catalogue import CalibrationSettings``) are both
read statically: nothing is imported, so basf2 need not exist.

Modules: :mod:`.prompt_api` (basf2's API: CalibrationSettings, INPUT_DATA_FILTERS and the checks),
:mod:`.reader` (static reading of one script), :mod:`.discovery` (a directory -> :class:`Catalogue`),
:mod:`.records` (CalibrationInfo, Catalogue), :mod:`.plan` (stages and groups, text/dot renderers).
"""

from ..errors import CatalogueError
from .discovery import discover
from .plan import CDST, CDST_PRODUCTION, RAW, Plan, Stage, build_plan, plan_as_dot, plan_as_text
from .prompt_api import (
    ALLOWED_DATA_FORMATS, INPUT_DATA_FILTERS, SUBSYSTEMS, CalibrationSettings, FilterVocabulary, ValidationSettings,
    split_filter, using_vocabulary,
)
from .records import CalibrationInfo, Catalogue, SkippedScript

__all__ = [
    "ALLOWED_DATA_FORMATS", "INPUT_DATA_FILTERS", "SUBSYSTEMS", "CalibrationInfo", "CalibrationSettings", "Catalogue",
    "CatalogueError", "FilterVocabulary", "Plan", "SkippedScript", "Stage", "ValidationSettings", "build_plan",
    "discover", "plan_as_dot", "plan_as_text", "split_filter", "using_vocabulary", "RAW", "CDST_PRODUCTION", "CDST",
]
