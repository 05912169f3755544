"""SVD time offsets per sensor.

Aligns the hit time of every SVD sensor to the event T0 measured by the CDC, using tracks from
hadronic events, and stores one offset per sensor and side in the SVDTimeOffsets payload.
"""

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

# This script declares its settings only; calibrate(job) is added with the physics implementation.

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="SVDTimeOffsets",
                               expert_username="svd_expert",
                               subsystem="svd",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=["hadron_calib"],
                               input_data_filters={"hadron_calib": [INPUT_DATA_FILTERS["Data Tag"]["hadron_calib"],
                                                                    INPUT_DATA_FILTERS["Run Type"]["physics"],
                                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                                                                    INPUT_DATA_FILTERS["Magnet"]["On"]]},
                               depends_on=[],
                               expert_config={"max_files_per_run": 5,
                                              "min_hits_per_sensor": 200},
                               produced_payloads=["SVDTimeOffsets"])
