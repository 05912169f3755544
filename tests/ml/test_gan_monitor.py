"""The GAN's held-out monitor (issue 15): its statistics on a known patch, a generator that reproduces the
held-out background scores near 0, one with too few pixels or broken clusters scores high, and training
keeps the best-scoring snapshot."""

from __future__ import annotations

import numpy as np
import pytest

from b2luca.reco.geometry import nominal_geometry

torch = pytest.importorskip("torch")

SCALE = 30.0
THRESHOLD = 5.0 / SCALE


def test_fired_statistics_of_a_known_patch():
    from b2luca.ml.gan_monitor import fired_statistics

    img = torch.zeros(3, 4, 5)
    img[0, 1, 1:3] = 1.0  # a horizontal 2-pixel cluster
    img[0, 3, 4] = 1.0  # a single pixel
    img[0, 2, 3] = 1.0  # diagonal to both: one cluster of 4 with them (8-connected)
    img[1, 0:3, 0] = 1.0  # a vertical 3-pixel cluster, in another patch
    img[2, 2, 2] = 0.1  # below threshold
    occ, size = fired_statistics(img, torch.tensor([0, 1, 1]), 3, THRESHOLD)
    np.testing.assert_allclose(occ, [4 / 20, 3 / 40, 0.0])
    assert size == pytest.approx(7 / 2)


def _patches(seed: int, n_events: int = 30):
    from b2luca.ml.pxd_gan import regions, sensor_patches
    from b2luca.sim.pxd_background import pxd_background

    geom = nominal_geometry()
    images, region = sensor_patches(pxd_background(np.random.default_rng(seed), n_events, geom), n_events, geom,
                                    15, 10, SCALE)
    return torch.from_numpy(images), torch.from_numpy(region), regions(15, 10)[2]


class _Resampler:
    """A 'generator' that returns real patches of the asked region from another sample, optionally damaged."""

    def __init__(self, images, region, damage=None):
        self.by_region = {int(c): images[region == c] for c in torch.unique(region)}
        self.damage = damage

    def __call__(self, cond):
        g = torch.Generator().manual_seed(5)
        out = torch.stack([self.by_region[int(c)][torch.randint(0, len(self.by_region[int(c)]), (1,), generator=g)[0]]
                           for c in cond])
        return self.damage(out) if self.damage else out


def test_monitor_scores_faithful_low_and_damaged_generators_high():
    from b2luca.ml.gan_monitor import HeldOutMonitor

    held_images, held_region, n_cond = _patches(1)
    other_images, other_region, _ = _patches(2)
    monitor = HeldOutMonitor(torch, held_images, held_region, n_cond, THRESHOLD, per_region=300)
    faithful, _ = monitor.score(_Resampler(other_images, other_region))
    assert faithful < 0.2
    keep = torch.rand(other_images.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    thinned, fig = monitor.score(_Resampler(other_images * keep, other_region))
    assert thinned > 0.35 and fig["occupancy_deviation"] < -0.4
    columns = torch.arange(10) % 2 == 0  # every other column dropped: clusters split, fewer pixels each
    split, fig = monitor.score(_Resampler(other_images * columns, other_region))
    assert fig["cluster_size_deviation"] < -0.2 and split > faithful


def test_training_keeps_the_best_held_out_snapshot(monkeypatch):
    """The payload is the generator of the evaluation with the lowest score, not the last one."""
    from b2luca.ml import gan_monitor, pxd_gan
    from b2luca.sim.pxd_background import pxd_background
    from calibrations.pxd_background_gan import settings

    scores = iter([0.5, 0.1, 0.4, 0.3])
    kept: dict = {}
    original = gan_monitor.HeldOutMonitor.score

    def scripted(self, gen):
        score = next(scores)
        if score == 0.1:
            kept.update({k: v.copy() for k, v in gen.arrays.items() if k.startswith("gen_")})
        original(self, gen)
        return score, {"occupancy_deviation": score, "occupancy_rms_deviation": score, "cluster_size_deviation": 0.0}

    monkeypatch.setattr(gan_monitor.HeldOutMonitor, "score", scripted)
    geom = nominal_geometry()
    cfg = {**settings.expert_config, "patch_v": 15, "patch_u": 10, "hidden": 16, "generator_iterations": 8,
           "eval_every": 2, "eval_per_region": 4, "threads": 1, "device": "cpu"}
    arrays, figures = pxd_gan.train(pxd_background(np.random.default_rng(4), 10, geom), 10, geom, cfg)
    assert figures["kept_iteration"] == 4 and figures["heldout_score"] == 0.1
    assert kept
    for name, value in kept.items():
        np.testing.assert_array_equal(arrays[name], value)


def test_fired_images_are_thresholded_with_a_straight_through_gradient():
    """What the critic sees of a generated image: the pixels below threshold are 0 (as in the real images),
    yet their gradient is kept (the generator can still learn to raise them)."""
    from b2luca.ml.pxd_gan import fired

    x = torch.tensor([0.05, 0.2, 0.0, 1.0], requires_grad=True)
    y = fired(x, THRESHOLD)
    np.testing.assert_array_equal(y.detach().numpy(), np.array([0.0, 0.2, 0.0, 1.0], np.float32))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0, 3.0, 4.0])
