"""Machine-learned calibrations (issue 16): PyTorch set-up, model payloads, ECL mu/pi images and CNN.

Only :mod:`.torch_setup`, :mod:`.model_payload` and :mod:`.ecl_cnn` import torch (lazily, through
:func:`require_torch`); :mod:`.ecl_images` is numpy only.  Install with ``pip install -e ".[ml]"``.
"""

from .torch_setup import require_torch, resolve_device, set_up_torch

__all__ = ["require_torch", "resolve_device", "set_up_torch"]
