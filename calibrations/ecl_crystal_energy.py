"""ECL crystal energy calibration.

Calibrates the energy scale of every ECL crystal with Bhabha events: each crystal's deposited
energy is compared with the expectation from the known beam energy, and the per-crystal
correction factors are stored in the ECLCrystalEnergy payload.
"""

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

# This script declares its settings only; calibrate(job) is added with the physics implementation.

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="ECLCrystalEnergy",
                               expert_username="ecl_expert",
                               subsystem="ecl",
                               description=__doc__,
                               input_data_formats=["cdst"],
                               input_data_names=["bhabha_all_calib"],
                               input_data_filters={"bhabha_all_calib":
                                                   [INPUT_DATA_FILTERS["Data Tag"]["bhabha_all_calib"],
                                                    INPUT_DATA_FILTERS["Run Type"]["physics"],
                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                                                    INPUT_DATA_FILTERS["Magnet"]["On"]]},
                               depends_on=[],
                               expert_config={"min_entries_per_crystal": 100,
                                              "max_iterations": 5},
                               produced_payloads=["ECLCrystalEnergy"])
