"""The nominal (starting) constants as payloads: what reconstruction assumes when a payload is missing.

Payload names and array keys are documented in :mod:`b2luca.sim.truth`; the values match
:meth:`b2luca.reco.measurements.Constants.nominal`.
"""

from __future__ import annotations

import numpy as np

from .geometry import N_ECL_CRYSTALS, N_PXD_PIXELS, NOMINAL_BEAMSPOT_SIZE, Geometry, nominal_geometry


def nominal_payloads(geom: Geometry | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Starting constants: nominal geometry, zero offsets, unit ECL constants, nominal beam spot, no masks."""
    geom = geom or nominal_geometry()
    n_pxd = int(geom.is_pxd.sum())
    return {
        "VXDAlignment": {"sensor_id": geom.sensor_id.astype(np.int32),
                         "params": np.zeros((geom.n_sensors, 6), dtype=np.float64)},
        "CDCAlignment": {"layer": np.arange(geom.n_cdc_layers, dtype=np.int32),
                         "params": np.zeros((geom.n_cdc_layers, 3))},
        "CDCTimeZeros": {"board": np.arange(geom.n_cdc_boards, dtype=np.int32), "t0": np.zeros(geom.n_cdc_boards)},
        "SVDTimeOffsets": {"sensor_id": geom.svd_sensor_ids.astype(np.int32),
                           "offset": np.zeros(geom.svd_sensor_ids.size)},
        "ECLCrystalEnergy": {"crystal": np.arange(N_ECL_CRYSTALS, dtype=np.int32), "constant": np.ones(N_ECL_CRYSTALS)},
        "BeamSpot": {"position": np.zeros(3), "position_error": np.eye(3),
                     "size": np.diag(NOMINAL_BEAMSPOT_SIZE ** 2)},
        "PXDMasks": {"sensor_id": geom.pxd_sensor_ids.astype(np.int32),
                     "status": np.zeros((n_pxd, N_PXD_PIXELS), dtype=np.uint8)},
        "SVDNoise": {"sensor_id": geom.svd_sensor_ids.astype(np.int32),
                     "noise_u": np.full(geom.svd_sensor_ids.size, 4.0),
                     "noise_v": np.full(geom.svd_sensor_ids.size, 4.0)},
    }


__all__ = ["nominal_payloads"]
