"""Beam spot position and size.

Fits the interaction-region position and size from the vertices of di-muon events reconstructed
with the raw-stage constants, and stores them in the BeamSpot payload.
"""

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

# This script declares its settings only; calibrate(job) is added with the physics implementation.

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="BeamSpot",
                               expert_username="beamspot_expert",
                               subsystem="tracking",
                               description=__doc__,
                               input_data_formats=["cdst"],
                               input_data_names=["mumu_tight_or_highm_calib"],
                               input_data_filters={"mumu_tight_or_highm_calib":
                                                   [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"],
                                                    INPUT_DATA_FILTERS["Run Type"]["physics"],
                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                                                    INPUT_DATA_FILTERS["Magnet"]["On"]]},
                               depends_on=[],
                               expert_config={"min_events": 1000,
                                              "outlier_sigma": 5.0},
                               produced_payloads=["BeamSpot"])
