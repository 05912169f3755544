"""A PyTorch model as a conditions payload: named numeric arrays (a ROOT file via uproot, no pickle).

Layout: every tensor of a model's ``state_dict`` under ``<prefix>_<name with '.' -> '_'>`` and the
hyper-parameters as 1-element arrays ``hp_<name>``.  The architecture is rebuilt from the
hyper-parameters and the state dict is filled by name, so loading never unpickles anything.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import PayloadError


def state_to_arrays(state: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """``{prefix_name: numpy array}`` from a state dict (tensors are copied to the CPU)."""
    return {f"{prefix}_{k.replace('.', '_')}": v.detach().cpu().numpy().copy() for k, v in state.items()}


def hyper_to_arrays(hyper: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Hyper-parameters (numbers) as ``hp_<name>`` float64 arrays of one element."""
    return {f"hp_{k}": np.array([float(v)]) for k, v in hyper.items()}


def hyper_from_arrays(arrays: Mapping[str, np.ndarray], names: tuple[str, ...], payload: str) -> dict[str, float]:
    """The hyper-parameters ``names`` from payload arrays; a missing one raises PayloadError naming it."""
    missing = [n for n in names if f"hp_{n}" not in arrays]
    if missing:
        raise PayloadError(f"payload {payload}: missing hyper-parameter(s) {', '.join('hp_' + m for m in missing)}")
    return {n: float(np.asarray(arrays[f"hp_{n}"]).reshape(-1)[0]) for n in names}


def load_state(model: Any, arrays: Mapping[str, np.ndarray], prefix: str, payload: str) -> Any:
    """Fill ``model``'s parameters from ``arrays`` (shapes checked); returns the model in eval mode."""
    import torch

    state = {}
    problems = []
    for name, tensor in model.state_dict().items():
        key = f"{prefix}_{name.replace('.', '_')}"
        if key not in arrays:
            problems.append(f"{key} missing")
            continue
        value = np.asarray(arrays[key])
        if tuple(value.shape) != tuple(tensor.shape):
            problems.append(f"{key} has shape {value.shape}, the model expects {tuple(tensor.shape)}")
            continue
        state[name] = torch.from_numpy(value.astype(np.float32, copy=True))
    if problems:
        raise PayloadError(f"payload {payload}: " + "; ".join(problems))
    model.load_state_dict(state)
    return model.eval()
