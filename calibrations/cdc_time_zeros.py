"""CDC time offsets (T0) per front-end board.

Fits the drift-time distribution of hits on good tracks from di-muon and hadronic events, board by
board, and stores the time offset of each board in the CDCTimeZeros payload. Runs on raw data: the
offsets are needed by the tracking used in every later calibration.
"""

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

# This script declares its settings only; calibrate(job) is added with the physics implementation.
# Until then the native runner has nothing to execute for it.

quality_flags = [INPUT_DATA_FILTERS["Run Type"]["physics"],
                 INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                 INPUT_DATA_FILTERS["Magnet"]["On"]]

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="CDCTimeZeros",
                               expert_username="cdc_expert",
                               subsystem="cdc",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=["mumu_tight_or_highm_calib", "hadron_calib"],
                               input_data_filters={
                                   "mumu_tight_or_highm_calib":
                                       [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"]] + quality_flags,
                                   "hadron_calib":
                                       [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"]] + quality_flags},
                               depends_on=[],
                               expert_config={"max_files_per_run": 5,
                                              "min_hits_per_board": 500,
                                              "max_iterations": 3,
                                              "payload_boundaries": []},
                               produced_payloads=["CDCTimeZeros"])
