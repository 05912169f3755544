"""Held-out quality of the PXD background generator during training (issue 15): which snapshot to keep.

A WGAN-GP trained for a few thousand iterations on two CPU cores does not converge to a point: its
generator oscillates around the target (the fired-pixel rate per region swings by tens of percent
between snapshots, and where the run ends is luck of the seed).  The monitor measures, on random-trigger
events held out of the training, the statistics the validation judges (occupancy per region, cluster
size) for the same noise at every snapshot, so that training keeps the snapshot that reproduces them best,
as the CNN keeps its best epoch by validation loss.  torch is passed in (imported lazily by the caller).

Score (lower is better): the larger of the RMS over the regions of (generated / held-out - 1) of the
fired-pixel fraction (level and shape of the hit map; the RMS is less noisy than the worst region) and
|generated / held-out - 1| of the mean size of the 8-connected clusters within a patch (the held-out
clusters cut at the patch borders too).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fired_statistics(images: Any, region: Any, n_cond: int, threshold: float) -> tuple[np.ndarray, float]:
    """(fired-pixel fraction per region (n_cond,), mean size of the 8-connected clusters within the patches)
    of patches (N, pv, pu) with regions (N,)."""
    from ..reco.pxd_clusters import connected_pixels

    fired = (images > threshold).cpu().numpy()
    # 8-connected within a patch, never across patches (sparse: the cost grows with the fired pixels)
    patch, row, column = np.nonzero(fired)
    n_clusters = connected_pixels(patch, row, column, fired.shape[1], fired.shape[2])[1]
    per_patch = fired.reshape(fired.shape[0], -1).mean(axis=1)
    reg = region.cpu().numpy()
    occ = np.bincount(reg, per_patch, minlength=n_cond) / np.maximum(np.bincount(reg, minlength=n_cond), 1)
    return occ, float(fired.sum() / max(n_clusters, 1))


class HeldOutMonitor:
    """Scores generator snapshots against held-out real patches (see the module docstring)."""

    def __init__(self, torch: Any, real: Any, region: Any, n_cond: int, threshold: float, per_region: int,
                 device: str = "cpu") -> None:
        self.torch, self.n_cond, self.threshold = torch, n_cond, threshold
        self.occ_real, self.size_real = fired_statistics(real, region, n_cond, threshold)
        self.cond = torch.arange(n_cond).repeat_interleave(int(per_region)).to(device)

    def score(self, gen: Any) -> tuple[float, dict[str, float]]:
        """(score, figures: occupancy ratio - 1 overall and its RMS over the regions, cluster-size ratio - 1) of
        the snapshot ``gen``: ``cond -> images``, the same noise at every call (SnapshotSampler: a fixed seed)."""
        torch = self.torch
        with torch.no_grad():
            images = gen(self.cond).cpu()
        occ, size = fired_statistics(images, self.cond.cpu(), self.n_cond, self.threshold)
        seen = self.occ_real > 0
        occ_dev = occ[seen] / self.occ_real[seen] - 1
        rms = float(np.sqrt(np.mean(occ_dev ** 2))) if occ_dev.size else 0.0
        size_dev = size / self.size_real - 1 if self.size_real > 0 else 0.0
        figures = {"occupancy_deviation": float(occ[seen].sum() / self.occ_real[seen].sum() - 1) if seen.any() else 0.0,
                   "occupancy_rms_deviation": rms, "cluster_size_deviation": float(size_dev)}
        return max(rms, abs(float(size_dev))), figures


__all__ = ["HeldOutMonitor", "fired_statistics"]
