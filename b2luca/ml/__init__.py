"""Machine-learned calibrations (issue 16): PyTorch set-up, model payloads, ECL mu/pi images and CNN,
the PXD beam-background GAN.

Only :mod:`.torch_setup`, :mod:`.model_payload`, :mod:`.ecl_cnn` and :mod:`.pxd_gan` import torch
(lazily, through :func:`require_torch`); :mod:`.ecl_images` is numpy only.  Install with ``pip install -e ".[ml]"``.
"""

from .torch_setup import require_torch, resolve_device, set_up_torch

__all__ = ["require_torch", "resolve_device", "set_up_torch"]
