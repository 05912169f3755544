"""PXD hot and dead pixel masks.

Counts pixel occupancy in random-trigger events: pixels firing far above the sensor's mean
occupancy are masked as hot, pixels that never fire with enough statistics are marked dead. The
masks are stored in the PXDMasks payload.
"""

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

# This script declares its settings only; calibrate(job) is added with the physics implementation.

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="PXDHotDeadPixels",
                               expert_username="pxd_expert",
                               subsystem="pxd",
                               description=__doc__,
                               input_data_formats=["raw"],
                               input_data_names=["random_calib"],
                               input_data_filters={"random_calib":
                                                   [INPUT_DATA_FILTERS["Data Tag"]["random_calib"],
                                                    INPUT_DATA_FILTERS["Run Type"]["physics"],
                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good Or Recoverable"],
                                                    INPUT_DATA_FILTERS["Magnet"]["Either"]]},
                               depends_on=[],
                               expert_config={"hot_occupancy_factor": 20.0,
                                              "min_events_for_dead": 10000},
                               produced_payloads=["PXDMasks"])
