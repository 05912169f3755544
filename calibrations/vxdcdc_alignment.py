"""Full VXD and CDC alignment.

Simultaneous global alignment of the VXD sensors and CDC layers with b2luca's Millepede-style solver:
cosmic tracks through the whole detector, di-muons and hadronic tracks from the interaction point.
Local track parameters are eliminated per track, the global system is solved with constraints on
the weak modes. Results go to the VXDAlignment and CDCAlignment payloads. Needs the CDC time offsets.
"""

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS
from calibrations.cdc_time_zeros import settings as cdc_t0

# This script declares its settings only; calibrate(job) is added with the alignment implementation.

collection_names = ["cosmic_calib", "mumu_tight_or_highm_calib", "hadron_calib"]

quality_flags = [INPUT_DATA_FILTERS["Run Type"]["physics"],
                 INPUT_DATA_FILTERS["Data Quality Tag"]["Good Or Recoverable"],
                 "NOT " + INPUT_DATA_FILTERS["Data Quality Tag"]["Bad For Alignment"],
                 INPUT_DATA_FILTERS["Magnet"]["On"]]

default_config = {"cosmic_calib.max_processed_events_per_file": 4000,
                  "hadron_calib.max_processed_events_per_file": 1000,
                  "mumu_tight_or_highm_calib.max_processed_events_per_file": 5000,
                  "method": "sparse",
                  "max_iterations": 3,
                  "outlier_chi2_cut": 50.0}

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="VXDCDCAlignment",
                               expert_username="alignment_expert",
                               subsystem="alignment",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=collection_names,
                               input_data_filters={
                                   "cosmic_calib": [INPUT_DATA_FILTERS["Data Tag"]["cosmic_calib"]] + quality_flags,
                                   "mumu_tight_or_highm_calib":
                                       [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"]] + quality_flags,
                                   "hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]] + quality_flags},
                               depends_on=[cdc_t0],
                               expert_config=default_config,
                               produced_payloads=["VXDAlignment", "CDCAlignment"])
