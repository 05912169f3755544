"""Importing a module of compiled (numba) kernels with one clear error when it cannot be loaded."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import KernelLoadError

__all__ = ["import_kernels"]


def import_kernels(module: str, what: str) -> ModuleType:
    """Import the kernel module ``module`` (e.g. ``"b2luca.reco._kernels"``); whatever numba raises on the way (no
    writable cache, a compilation error) becomes a :class:`~b2luca.errors.KernelLoadError` that names ``what``
    (who needs the kernels), the module and the NUMBA_CACHE_DIR remedy."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever numba raises (no cache locator, compilation)
        raise KernelLoadError(
            f"{what}: its compiled kernels ({module}, numba) could not be loaded: {exc} (numba caches them next to "
            "the source or under NUMBA_CACHE_DIR: on a read-only installation set NUMBA_CACHE_DIR to a writable "
            "directory)") from exc
