"""The ECL mu/pi CNN (Belle II low-momentum muon ID): model, training, prediction, payload.

Architecture (published setup, on the toy's 7x7 window): one convolution 3x3, stride 1, padding 1,
``n_maps`` (64) feature maps, ReLU; the flattened maps (64 x 49 = 3136) concatenated with the track's
pT and the entry crystal's theta ring one-hot (46 rings in the toy barrel; "crystal position,
categorical") -> dense ``hidden`` (128), ReLU, dropout 0.1 -> 2 logits (pion, muon).  Adam, learning
rate 1e-3, cross-entropy, batch 512; one model per charge; the epoch with the lowest validation loss
is kept.  Robustness against crystal thresholds: every epoch each training image gets a threshold
drawn from 1, 2, 5 MeV.  Images enter in units of ``energy_scale`` (100 MeV), pT in GeV.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from .ecl_images import TEST, THRESHOLDS_GEV, TRAIN, VALID, WINDOW, TrackImages, threshold
from ..errors import PayloadError
from .model_payload import hyper_from_arrays, hyper_to_arrays, load_state, state_to_arrays
from .torch_setup import require_torch, resolve_device, set_up_torch
from ..reco.geometry import ECL_NTHETA

HYPER = ("n_maps", "hidden", "dropout", "n_theta", "window", "energy_scale", "format_version")
CHARGES = {"pos": 1, "neg": -1}
FORMAT_VERSION = 1
PAYLOAD = "ECLMuPiCNN"


def build_model(n_maps: int = 64, hidden: int = 128, dropout: float = 0.1, n_theta: int = ECL_NTHETA,
                window: int = WINDOW) -> Any:
    """A fresh (randomly initialised from torch's current seed) mu/pi CNN."""
    torch = require_torch("the ECL mu/pi CNN")
    nn = torch.nn

    class MuPiCNN(nn.Module):  # type: ignore[name-defined]  # torch is imported lazily
        """conv 3x3 (n_maps) -> [flat maps, pT, theta one-hot] -> dense(hidden) + dropout -> 2 logits."""

        def __init__(self) -> None:
            super().__init__()
            self.n_theta = int(n_theta)
            self.conv = nn.Conv2d(1, int(n_maps), kernel_size=3, stride=1, padding=1)
            self.fc1 = nn.Linear(int(n_maps) * window * window + 1 + int(n_theta), int(hidden))
            self.drop = nn.Dropout(float(dropout))
            self.fc2 = nn.Linear(int(hidden), 2)

        def forward(self, image, pt, ring):  # noqa: D401 - torch convention
            x = torch.relu(self.conv(image.unsqueeze(1))).flatten(1)
            onehot = torch.nn.functional.one_hot(ring, self.n_theta).to(x.dtype)
            x = torch.cat([x, pt.unsqueeze(1), onehot], dim=1)
            return self.fc2(self.drop(torch.relu(self.fc1(x))))

    return MuPiCNN()


def _tensors(torch: Any, t: TrackImages, image: np.ndarray, scale: float, device: str):
    return (torch.from_numpy(np.ascontiguousarray(image / scale, np.float32)).to(device),
            torch.from_numpy(t.pt.astype(np.float32)).to(device),
            torch.from_numpy(t.ring.astype(np.int64)).to(device))


def train_charge_model(mu: TrackImages, pi: TrackImages, cfg: Mapping[str, Any], seed: int, device: str,
                       log: Any = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train one charge model on the TRAIN split, keep the epoch with the lowest VALID loss.

    Returns (state arrays of the best epoch, figures: best_epoch, val_loss, n_train, seconds)."""
    torch = set_up_torch(seed, int(cfg["threads"]))
    t0 = time.perf_counter()
    data = TrackImages.concatenate([mu, pi])
    label = np.concatenate([np.ones(len(mu), np.int64), np.zeros(len(pi), np.int64)])
    tr, va = data.split == TRAIN, data.split == VALID
    if tr.sum() < 10 or va.sum() < 10 or len({*label[tr]}) < 2:
        raise RuntimeError(f"too few training samples: {int(tr.sum())} training, {int(va.sum())} validation "
                           f"({len(mu)} muon and {len(pi)} pion candidates)")
    scale = float(cfg["energy_scale"])
    model = build_model(int(cfg["n_maps"]), int(cfg["hidden"]), float(cfg["dropout"])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg["learning_rate"]))
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    train_set, val_set = data.select(tr), data.select(va)
    y_tr = torch.from_numpy(label[tr]).to(device)
    y_va = torch.from_numpy(label[va]).to(device)
    # validation at each of the thresholds (the robustness the model must have), fixed across epochs
    val_inputs = [_tensors(torch, val_set, threshold(val_set.image, thr), scale, device) for thr in THRESHOLDS_GEV]
    gen = torch.Generator().manual_seed(seed)
    batch = int(cfg["batch_size"])
    best: tuple[float, int, Any] = (np.inf, -1, None)
    for epoch in range(int(cfg["epochs"])):
        thr = rng.choice(np.asarray(THRESHOLDS_GEV, np.float32), size=len(train_set))
        img, pt, ring = _tensors(torch, train_set, threshold(train_set.image, thr), scale, device)
        model.train()
        perm = torch.randperm(len(train_set), generator=gen).to(device)
        for start in range(0, len(train_set), batch):
            idx = perm[start:start + batch]
            opt.zero_grad()
            loss = loss_fn(model(img[idx], pt[idx], ring[idx]), y_tr[idx])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(np.mean([loss_fn(model(*inp), y_va).item() for inp in val_inputs]))
        if log is not None:
            log.info("epoch %d: validation loss %.4f", epoch, val_loss)
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    figures = {"best_epoch": float(best[1]), "val_loss": best[0], "n_train": float(tr.sum()),
               "n_valid": float(va.sum()), "seconds": time.perf_counter() - t0}
    return best[2], figures


def train(mu: TrackImages, pi: TrackImages, cfg: Mapping[str, Any], log: Any = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Both charge models -> (payload arrays, figures).  Deterministic for ``cfg['seed']``."""
    device = resolve_device(cfg["device"])
    arrays: dict[str, np.ndarray] = {}
    figures: dict[str, float] = {}
    for k, (prefix, q) in enumerate(CHARGES.items()):
        state, fig = train_charge_model(mu.select(mu.charge == q), pi.select(pi.charge == q), cfg,
                                        int(cfg["seed"]) + k, device, log)
        arrays.update(state_to_arrays(state, prefix))
        figures.update({f"{prefix}_{name}": value for name, value in fig.items()})
    arrays.update(hyper_to_arrays({"n_maps": cfg["n_maps"], "hidden": cfg["hidden"], "dropout": cfg["dropout"],
                                   "n_theta": ECL_NTHETA, "window": WINDOW, "energy_scale": cfg["energy_scale"],
                                   "format_version": FORMAT_VERSION}))
    return arrays, figures


def load_models(arrays: Mapping[str, np.ndarray]) -> dict[int, Any]:
    """{charge: model in eval mode on the CPU} from payload arrays (no pickle)."""
    require_torch("the ECL mu/pi CNN")
    hp = hyper_from_arrays(arrays, HYPER, PAYLOAD)
    if int(hp["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"payload {PAYLOAD}: format_version {int(hp['format_version'])}, expected {FORMAT_VERSION}")
    models = {}
    for prefix, q in CHARGES.items():
        model = build_model(int(hp["n_maps"]), int(hp["hidden"]), hp["dropout"], int(hp["n_theta"]), int(hp["window"]))
        models[q] = load_state(model, arrays, prefix, PAYLOAD)
    return models


def muon_probability(arrays: Mapping[str, np.ndarray], t: TrackImages, image: np.ndarray,
                     models: dict[int, Any] | None = None) -> np.ndarray:
    """P(muon) per track from the payload's model of the track's charge (images already thresholded).

    Without ``models`` the forward pass (eval mode: no dropout) is computed with numpy from the payload's
    arrays, in float64: no torch import (~1.5 s of a validation job) and the same function as the torch
    module to ~1e-6 (tested).  With ``models`` (:func:`load_models`) torch evaluates them."""
    hp = hyper_from_arrays(arrays, HYPER, PAYLOAD)
    if int(hp["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"payload {PAYLOAD}: format_version {int(hp['format_version'])}, expected {FORMAT_VERSION}")
    scale = float(hp["energy_scale"])
    out = np.full(len(t), np.nan)
    for prefix, q in CHARGES.items():
        m = t.charge == q
        if not m.any():
            continue
        if models is not None:
            torch = require_torch("the ECL mu/pi CNN")
            with torch.no_grad():
                logits = models[q](*_tensors(torch, t.select(m), image[m], scale, "cpu"))
                out[m] = torch.softmax(logits, dim=1)[:, 1].double().numpy()
        else:
            out[m] = _numpy_muon_probability(arrays, prefix, image[m] / scale, t.pt[m], t.ring[m], int(hp["n_theta"]))
    return out


def _numpy_muon_probability(arrays: Mapping[str, np.ndarray], prefix: str, image: np.ndarray, pt: np.ndarray,
                            ring: np.ndarray, n_theta: int) -> np.ndarray:
    """The MuPiCNN forward pass in eval mode with numpy: conv 3x3 (padding 1) -> ReLU -> [maps, pT, ring
    one-hot] -> dense -> ReLU -> dense -> softmax; returns P(muon) (the second logit's probability)."""
    def w(name: str) -> np.ndarray:
        key = f"{prefix}_{name}"
        if key not in arrays:
            raise PayloadError(f"payload {PAYLOAD}: {key} missing")
        return np.asarray(arrays[key], np.float64)

    kernel, bias = w("conv_weight")[:, 0], w("conv_bias")  # (maps, 3, 3), (maps,)
    x = np.pad(np.asarray(image, np.float64), ((0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # (N, 7, 7, 3, 3)
    maps = np.maximum(np.einsum("nijab,mab->nmij", windows, kernel, optimize=True) + bias[None, :, None, None], 0)
    onehot = np.zeros((pt.size, n_theta))
    onehot[np.arange(pt.size), np.asarray(ring, np.int64)] = 1.0
    h = np.concatenate([maps.reshape(pt.size, -1), np.asarray(pt, np.float64)[:, None], onehot], axis=1)
    h = np.maximum(h @ w("fc1_weight").T + w("fc1_bias"), 0)
    logits = h @ w("fc2_weight").T + w("fc2_bias")
    return 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax of two logits, second class


__all__ = ["CHARGES", "PAYLOAD", "TEST", "build_model", "load_models", "muon_probability", "train"]
