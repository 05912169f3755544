"""Importing and configuring PyTorch for reproducible training (seeds, deterministic kernels, threads, device)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import MLDependencyError

INSTALL_HINT = 'install b2luca[ml] (pip install -e ".[ml]", which pins torch==2.13.0)'


def require_torch(what: str = "this calibration") -> Any:
    """The ``torch`` module; raises :class:`MLDependencyError` (one line) when it is not installed."""
    try:
        import torch
    except ImportError:
        raise MLDependencyError(f"{what} needs PyTorch, which is not installed: {INSTALL_HINT}") from None
    return torch


def resolve_device(device: str, what: str = "expert_config.device") -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cpu``/``cuda``/``cuda:N`` as given
    (``cuda`` without a GPU is an error naming the key)."""
    torch = require_torch()
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{what} = {device!r} but no CUDA device is available (use 'auto' or 'cpu')")
        return device
    raise ValueError(f"{what} must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def set_up_torch(seed: int, threads: int) -> Any:
    """Seed every generator, switch on deterministic algorithms and limit the CPU threads; returns torch.

    ``threads`` <= 0 means all cores.  On CUDA, deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG,
    set here unless the environment already has it."""
    torch = require_torch()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(int(seed))
    torch.use_deterministic_algorithms(True)
    n = int(threads) if int(threads) > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(n, os.cpu_count() or 1)))
    return torch
