"""PXD beam-background GAN (Belle II): a Wasserstein GAN with gradient penalty (Gulrajani et al. 2017,
arXiv:1704.00028) that generates PXD background pixel images, trained on random-trigger background; the
generator is the payload.

Published setup: 250 x 768 pixel sensor images, 96 normal random inputs to the generator, 5 critic updates
per generator update, Adam at 1e-4 decaying linearly to 0, PyTorch.  Scaled to the toy and to two CPU
cores, with a generator built for sparse images (issue 15: the fully connected generator of format 1
learnt cluster shapes pixel by pixel in every region, and its validation failed on 5 of 10 seeds):

* **Generator: seeds and stamps, a transposed convolution of a sparse noise map** (the translation-
  equivariant generator of DCGAN, Radford et al. 2016, arXiv:1511.06434, on a point-process input).  A
  normal noise map ``z0`` one position per pixel (a margin of ``KERNEL - 1``) fires a *seed* where
  ``z0 > t[region]``; each seed draws a shape latent (``latent`` normals) -> dense ``hidden`` (LeakyReLU)
  -> ``MAPS`` coefficients; the ``KERNEL x KERNEL`` transposed convolution (``MAPS`` -> 1, no bias) paints
  the cluster around the seed; ReLU.  A cluster's shape is learnt once for every position and region;
  pixels far from a seed are exactly 0.  Regions (PXD layer x v band of ``patch_v`` rows) enter only
  through the seed threshold.
* **Occupancy per region matched explicitly** (moment matching, cf. feature matching, Salimans et al.
  2016, arXiv:1606.03498): the occupancy is one number per region, so the thresholds are not learnt by
  the adversarial game but set (:func:`match_occupancy`, every ``eval_every`` iterations and at the end)
  to fire the training patches' fraction of pixels in each region.
* **Critic of single clusters** (a PatchGAN-like local critic, Isola et al. 2017, arXiv:1611.07004, at
  the scale of a cluster): real clusters (8-connected, :func:`cluster_crops`) cut out ``KERNEL x KERNEL``
  around their charge centroid against generated single-seed clusters (:meth:`Generator.crops`), both as
  the detector reads them (:func:`fired`, straight-through gradient); fully connected, ``CRITIC_HIDDEN``
  x 2, no normalisation.  The game is played on ~49-pixel images: cheap steps, stable.
* The generator starts from a faint round cluster (``INIT_WIDTH``, ``INIT_CHARGE``: 18 ADC, mostly one
  pixel above threshold, the mean cluster size 65 % too small) in its first map, the other maps random:
  the cluster size and charge are learnt by the game; the critic trains ``CRITIC_WARMUP`` steps before
  the first generator step.

Gradient penalty weight ``gp_lambda`` (10), Adam betas (0.5, 0.9), learning rate decaying linearly to 0.
The payload is the snapshot that best reproduces held-out events (:mod:`.gan_monitor`).  Inference
(:class:`GanBackground`) is numpy + scipy.special: a whole sensor is one image (no patch tiling), seeds are
drawn directly (a binomial count per seed row), only the pixels they touch are painted.  Determinism:
seeds + ``torch.use_deterministic_algorithms``; noise and batches come from a seeded generator, so a rerun
gives the same payload (on the same device and thread count).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
from scipy.special import ndtr, ndtri

from .gan_monitor import HeldOutMonitor
from .model_payload import hyper_from_arrays, hyper_to_arrays, state_to_arrays
from .torch_setup import require_torch, resolve_device, set_up_torch
from ..errors import PayloadError
from ..reco.geometry import PXD_NU, PXD_NV, Geometry

PAYLOAD = "PXDBackgroundGAN"
FORMAT_VERSION = 2  # 2: the convolutional seed-and-stamp generator (1: the fully connected one)
ADC_THRESHOLD = 5.0  # the toy PXD's pixel threshold (b2luca/sim/pxd_background.py)
HYPER = ("latent", "hidden", "patch_v", "patch_u", "n_layers", "adc_scale", "maps", "kernel", "format_version")
N_LAYERS = 2  # PXD layers 1 and 2
MAPS = 8  # basis stamps (channels of the transposed convolution)
KERNEL = 7  # stamp size (pixels): the transposed convolution's kernel, and the cluster crops the critic sees
CRITIC_HIDDEN = 128  # units of the critic's two hidden layers
MAX_CROP_EVENTS = 100  # training events whose clusters the critic sees (~90k at the demo's occupancy)
CRITIC_WARMUP = 50  # critic updates before the first generator update (WGAN: a useful critic first)
MATCH_ROUNDS = 3  # fixed-point rounds of match_occupancy
INIT_WIDTH, INIT_CHARGE = 0.6, 0.6  # the stamps' start: a faint round cluster (18 ADC: mostly 1 pixel fires)
SEED_THRESHOLD = 2.7  # initial seed threshold of every region: P(z > 2.7) = 0.35 % of the positions


def regions(patch_v: int, patch_u: int) -> tuple[int, int, int]:
    """(v bands, u columns, conditions = layers x v bands) of a patch size that tiles the toy sensor."""
    if PXD_NV % patch_v or PXD_NU % patch_u:
        raise ValueError(f"patch {patch_v} x {patch_u} must tile the {PXD_NV} x {PXD_NU} toy PXD sensor")
    return PXD_NV // patch_v, PXD_NU // patch_u, N_LAYERS * (PXD_NV // patch_v)


def build_generator(latent: int, hidden: int, patch_v: int, patch_u: int) -> Any:
    """The seed-and-stamp generator (see the module docstring): ``forward(cond, generator)`` draws its own
    noise from the torch ``generator`` and returns (N, patch_v, patch_u) images >= 0 for the regions ``cond``."""
    torch = require_torch("the PXD background GAN")
    nn = torch.nn
    n_cond = regions(patch_v, patch_u)[2]

    class Generator(nn.Module):  # type: ignore[name-defined]  # torch is imported lazily
        """Per-region seed thresholds, a per-seed shape network (latent -> hidden -> MAPS coefficients) and
        a KERNEL x KERNEL transposed convolution (MAPS -> 1, no bias) followed by ReLU."""

        def __init__(self) -> None:
            super().__init__()
            self.n_cond, self.pv, self.pu, self.latent = n_cond, patch_v, patch_u, latent
            self.register_buffer("threshold", torch.full((n_cond,), SEED_THRESHOLD))  # set by match_occupancy
            self.shape = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, MAPS))
            self.stamp = nn.Conv2d(MAPS, 1, KERNEL, bias=False)
            with torch.no_grad():  # start from faint round clusters (Gaussian, sigma INIT_WIDTH, charge INIT_CHARGE)
                r2 = ((torch.arange(KERNEL) - KERNEL // 2) ** 2).float()
                blob = torch.exp(-(r2[:, None] + r2[None, :]) / (2 * INIT_WIDTH ** 2))
                self.stamp.weight.mul_(0.5)  # maps 1.. random: distinct shapes to combine
                self.stamp.weight[0, 0] = INIT_CHARGE * blob / blob.sum()  # map 0: the round cluster
                self.shape[2].bias.zero_()
                self.shape[2].bias[0] = 1.0

        def render(self, n: int, seeds: tuple[Any, Any, Any], z: Any) -> Any:
            """Images (n, pv, pu) of seeds at (image, row, column) of the seed map (pv + KERNEL - 1, pu +
            KERNEL - 1) with shape latents ``z``."""
            coef = self.shape(z)
            grid = coef.new_zeros((n, self.pv + KERNEL - 1, self.pu + KERNEL - 1, MAPS)).index_put(seeds, coef)
            return torch.relu(self.stamp(grid.permute(0, 3, 1, 2)))[:, 0]

        def crops(self, n: int, generator, z=None) -> Any:
            """(n, KERNEL, KERNEL) single-seed clusters as they appear in an image (the kernel flipped: a
            seed at seed-map (j, i) puts ``w[a, b]`` on pixel (j - a, i - b)), centred on the middle pixel;
            shape latents ``z`` or drawn from ``generator``."""
            if z is None:
                z = torch.randn(n, self.latent, generator=generator).to(self.stamp.weight.device)
            basis = self.stamp.weight[0].flip(1, 2).reshape(MAPS, KERNEL * KERNEL)
            return torch.relu(self.shape(z) @ basis).view(n, KERNEL, KERNEL)

        def forward(self, cond, generator):  # noqa: D401 - torch convention
            n = cond.numel()
            z0 = torch.randn(n, self.pv + KERNEL - 1, self.pu + KERNEL - 1, generator=generator).to(cond.device)
            t = self.threshold[cond]
            seeds = torch.nonzero(z0 > t[:, None, None], as_tuple=True)
            z = torch.randn(seeds[0].numel(), self.latent, generator=generator).to(cond.device)
            return self.render(n, seeds, z)

    return Generator()


def build_critic(hidden: int = CRITIC_HIDDEN) -> Any:
    """Critic of single clusters: (N, KERNEL, KERNEL) crops -> hidden -> hidden -> score (LeakyReLU 0.2, no
    normalisation: WGAN-GP)."""
    torch = require_torch("the PXD background GAN")
    nn = torch.nn

    class Critic(nn.Module):  # type: ignore[name-defined]
        """Fully connected on the KERNEL x KERNEL pixels of a cluster crop."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(KERNEL * KERNEL, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                     nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

        def forward(self, x):  # noqa: D401
            return self.net(x.flatten(1))[:, 0]

    return Critic()


def cluster_crops(pixels: Mapping[str, np.ndarray], adc_scale: float) -> np.ndarray:
    """Crops (M, KERNEL, KERNEL) float32 = ADC / ``adc_scale`` of the 8-connected clusters of fired background
    pixels (``event``, ``sensor``, ``pixel``, ``adc``), each centred on the pixel of its charge centroid;
    pixels of a cluster beyond the crop (long curler tracks) are cut, other clusters are not included."""
    from ..reco.pxd_clusters import clusters

    ev = np.asarray(pixels["event"], np.int64)
    if ev.size == 0:
        return np.zeros((0, KERNEL, KERNEL), np.float32)
    label = clusters(np.asarray(pixels["sensor"]), np.asarray(pixels["pixel"]), ev)
    label = np.unique(label, return_inverse=True)[1]
    q = np.asarray(pixels["adc"], np.float64) / adc_scale
    iv, iu = np.divmod(np.asarray(pixels["pixel"], np.int64), PXD_NU)
    charge = np.bincount(label, q)
    cv = np.rint(np.bincount(label, q * iv) / charge).astype(np.int64)
    cu = np.rint(np.bincount(label, q * iu) / charge).astype(np.int64)
    half = KERNEL // 2
    dv, du = iv - cv[label] + half, iu - cu[label] + half
    keep = (dv >= 0) & (dv < KERNEL) & (du >= 0) & (du < KERNEL)
    crops = np.zeros((charge.size, KERNEL, KERNEL), np.float32)
    crops[label[keep], dv[keep], du[keep]] = q[keep]
    return crops


def sensor_patches(pixels: Mapping[str, np.ndarray], n_events: int, geom: Geometry, patch_v: int, patch_u: int,
                   adc_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, patch_v, patch_u) float32 = ADC / adc_scale, region (N,) int64) of every patch of every
    PXD sensor of ``n_events`` events from fired pixels (``event`` 0-based, ``sensor``, ``pixel``, ``adc``)."""
    nb_v, nb_u, _ = regions(patch_v, patch_u)
    pxd = np.flatnonzero(geom.is_pxd)
    n_sens = pxd.size
    # written straight into patch order (event, sensor, v band, u column): no full-image copy
    patches = np.zeros((n_events * n_sens * nb_v * nb_u, patch_v, patch_u), np.float32)
    pos = np.searchsorted(pxd, geom.sensor_index(np.asarray(pixels["sensor"])))
    iv, iu = np.divmod(np.asarray(pixels["pixel"], np.int64), PXD_NU)
    (bv, v_in), (bu, u_in) = np.divmod(iv, patch_v), np.divmod(iu, patch_u)
    patch = ((np.asarray(pixels["event"], np.int64) * n_sens + pos) * nb_v + bv) * nb_u + bu
    patches[patch, v_in, u_in] = np.asarray(pixels["adc"], np.float32) / adc_scale
    layer = geom.layer[pxd] - 1
    region = (layer[None, :, None, None] * nb_v + np.arange(nb_v)[None, None, :, None])
    region = np.broadcast_to(region, (n_events, n_sens, nb_v, nb_u))
    return patches, region.reshape(-1).astype(np.int64)


def fired(images: Any, threshold: float) -> Any:
    """The generated images as the detector reads them, pixels below ``threshold`` set to 0 (what the
    critic sees, issue 15), with a straight-through gradient: backward is the identity, so pixels below
    the threshold still learn.  The real images have no pixels below threshold; without this the critic
    compared raw generator outputs, whose many small values break clusters apart once thresholded."""
    return images + (images * (images > threshold) - images).detach()


def events_subset(pixels: Mapping[str, np.ndarray], keep: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    """(the pixels of the events ``keep`` (bool per event), events renumbered 0.., number of events kept)."""
    ev = np.asarray(pixels["event"], np.int64)
    on = keep[ev]
    new_id = np.cumsum(keep) - 1
    out = {k: np.asarray(v)[on] for k, v in pixels.items()}
    out["event"] = new_id[ev[on]]
    return out, int(keep.sum())


def pixel_occupancy(pixels: Mapping[str, np.ndarray], n_events: int, geom: Geometry, patch_v: int, patch_u: int,
                    adc_scale: float) -> np.ndarray:
    """Fraction of the pixels above the ADC threshold per region (layers x v bands of ``patch_v`` rows) of
    ``n_events`` events of background pixels (``event``, ``sensor``, ``pixel``, ``adc``): the same value as
    :func:`region_occupancy` of their patches, counted from the pixels (no patch images)."""
    nb_v, _, n_cond = regions(patch_v, patch_u)
    pxd = np.flatnonzero(geom.is_pxd)
    layer = geom.layer[geom.sensor_index(np.asarray(pixels["sensor"]))] - 1
    band = (np.asarray(pixels["pixel"], np.int64) // PXD_NU) // patch_v
    fired_px = (np.asarray(pixels["adc"], np.float32) / np.float32(adc_scale)) * np.float32(adc_scale) > ADC_THRESHOLD
    counts = np.bincount((layer * nb_v + band)[fired_px], minlength=n_cond)
    sensors = np.bincount(geom.layer[pxd] - 1, minlength=N_LAYERS)
    return counts / np.maximum(np.repeat(sensors, nb_v) * n_events * patch_v * PXD_NU, 1)


def fired_per_patch(images: np.ndarray, adc_scale: float, rows: int = 65536) -> np.ndarray:
    """Pixels above the ADC threshold per patch (N,) of ``images`` (N, pv, pu) = ADC / ``adc_scale``, counted
    ``rows`` patches at a time (no temporaries of the whole array)."""
    flat = images.reshape(images.shape[0], -1)
    return np.concatenate([np.count_nonzero(flat[s:s + rows] * adc_scale > ADC_THRESHOLD, axis=1)
                           for s in range(0, flat.shape[0], rows)] or [np.zeros(0, np.int64)])


def region_occupancy(counts: np.ndarray, region: np.ndarray, n_cond: int, pixels: int) -> np.ndarray:
    """Fraction of the pixels above threshold per region (n_cond,) from the fired pixels per patch ``counts``
    (:func:`fired_per_patch`) of patches of ``pixels`` pixels with regions ``region``."""
    return np.bincount(region, counts, minlength=n_cond) / np.maximum(np.bincount(region, minlength=n_cond) * pixels, 1)


def match_occupancy(arrays: dict[str, np.ndarray], target: np.ndarray, per_region: int, seed: int) -> np.ndarray:
    """Seed thresholds (n_cond,) for which the generator ``arrays`` fires the fraction ``target`` of the pixels of
    each region (``per_region`` patches a region, the same random numbers every round: a fixed point of
    ``P(z > t_new) = P(z > t) x target / generated``, MATCH_ROUNDS rounds).  The occupancy per region is one
    number per region: it is matched explicitly (moment matching), so the adversarial game learns the shapes."""
    gan = GanBackground(arrays)
    t = gan.thresholds
    region = np.repeat(np.arange(t.size), per_region)
    for _ in range(MATCH_ROUNDS):
        occ = region_occupancy(fired_per_patch(gan.images(np.random.default_rng(seed), region), 1.0), region,
                               t.size, gan.pv * gan.pu)
        ratio = np.clip(np.where(occ > 0, target / np.maximum(occ, 1e-12), 4.0), 0.25, 4.0)
        t = np.where(target > 0, -ndtri(np.clip(ndtr(-t) * ratio, 1e-12, 0.5)), 8.0)
        gan.thresholds = t
    return t.astype(np.float32)


class SnapshotSampler:
    """A generator snapshot (payload ``arrays``) as the held-out monitor samples it: ``cond ->``
    torch images / adc_scale, generated with numpy (~10x cheaper than the module) from the fixed ``seed``
    (every call the same random numbers)."""

    def __init__(self, arrays: dict[str, np.ndarray], seed: int) -> None:
        self.arrays, self.seed = arrays, int(seed)
        self._gan = GanBackground(arrays)

    def __call__(self, cond: Any) -> Any:
        torch = require_torch("the PXD background GAN")
        images = self._gan.images(np.random.default_rng(self.seed), cond.cpu().numpy()) / self._gan.scale
        return torch.from_numpy(images)


def _lr_lambda(total: int):
    return lambda step: max(0.0, 1.0 - step / max(total, 1))


def train(pixels: Mapping[str, np.ndarray], n_events: int, geom: Geometry, cfg: Mapping[str, Any],
          log: Any = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train the WGAN-GP on background pixels of ``n_events`` events -> (payload arrays, figures)."""
    device = resolve_device(str(cfg["device"]))
    seed = int(cfg["seed"])
    torch = set_up_torch(seed, int(cfg["threads"]))
    t0 = time.perf_counter()
    pv, pu, latent, ch = int(cfg["patch_v"]), int(cfg["patch_u"]), int(cfg["latent"]), int(cfg["hidden"])
    scale = float(cfg["adc_scale"])
    n_cond = regions(pv, pu)[2]
    # every holdout_every-th event is held out of the training: the monitor picks the snapshot on it
    every, eval_every = int(cfg.get("holdout_every", 0)), int(cfg.get("eval_every", 0))
    if not (eval_every > 0 and every > 1 and n_events >= 2 * every):
        eval_every, every = 0, n_events + 1  # nothing held out
    held_event = np.arange(n_events) % every == every - 1
    train_px, n_train = events_subset(pixels, ~held_event)
    target = pixel_occupancy(train_px, n_train, geom, pv, pu, scale)  # per region, what match() reproduces
    crop_px, _ = events_subset(train_px, np.arange(n_train) < MAX_CROP_EVENTS)
    crops = cluster_crops(crop_px, scale)  # what the critic compares: single clusters
    if crops.shape[0] == 0:
        raise ValueError("PXD background GAN: no fired background pixels to learn cluster shapes from")
    real = torch.from_numpy(crops).to(device)
    monitor, per_region = None, int(cfg.get("eval_per_region", 500))
    if eval_every > 0:
        held_px, n_held = events_subset(pixels, held_event)
        images, region = sensor_patches(held_px, n_held, geom, pv, pu, scale)
        monitor = HeldOutMonitor(torch, torch.from_numpy(images), torch.from_numpy(region), n_cond,
                                 ADC_THRESHOLD / scale, per_region, device)
    gen, critic = build_generator(latent, ch, pv, pu).to(device), build_critic().to(device)
    hyper = hyper_to_arrays({"latent": latent, "hidden": ch, "patch_v": pv, "patch_u": pu, "n_layers": N_LAYERS,
                             "adc_scale": scale, "maps": MAPS, "kernel": KERNEL, "format_version": FORMAT_VERSION})

    def match() -> None:  # the seed thresholds that give the training patches' occupancy per region
        arrays = {**state_to_arrays(gen.state_dict(), "gen"), **hyper}
        gen.threshold.copy_(torch.from_numpy(match_occupancy(arrays, target, per_region, seed + 104729)))

    betas = (float(cfg["beta1"]), float(cfg["beta2"]))
    opt_g = torch.optim.Adam(gen.parameters(), lr=float(cfg["learning_rate"]), betas=betas)
    opt_c = torch.optim.Adam(critic.parameters(), lr=float(cfg["learning_rate"]), betas=betas)
    iters, n_critic, batch = int(cfg["generator_iterations"]), int(cfg["critic_updates"]), int(cfg["batch_size"])
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, _lr_lambda(iters))
    sched_c = torch.optim.lr_scheduler.LambdaLR(opt_c, _lr_lambda(iters * n_critic + CRITIC_WARMUP))
    g = torch.Generator(device="cpu").manual_seed(seed)
    lam = float(cfg["gp_lambda"])
    thr = ADC_THRESHOLD / scale
    w_dist = 0.0
    best: tuple[float, int, Any, dict[str, float]] = (np.inf, iters, None, {})
    match()
    for it in range(iters):
        for _ in range(n_critic + (CRITIC_WARMUP if it == 0 else 0)):
            x = real[torch.randint(0, real.shape[0], (batch,), generator=g).to(device)]
            with torch.no_grad():
                fake = fired(gen.crops(batch, g), thr)
            eps = torch.rand(batch, 1, 1, generator=g).to(device)
            mix = (eps * x + (1 - eps) * fake).requires_grad_(True)
            grad = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)[0]
            gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            d_real, d_fake = critic(x).mean(), critic(fake).mean()
            loss_c = d_fake - d_real + lam * gp
            opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            sched_c.step()
            w_dist = float((d_real - d_fake).item())
        loss_g = -critic(fired(gen.crops(batch, g), thr)).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        sched_g.step()
        if (it + 1) % (eval_every or max(iters // 10, 1)) == 0 or it == iters - 1:
            match()
        if monitor is not None and ((it + 1) % eval_every == 0 or it == iters - 1):
            score, dev = monitor.score(SnapshotSampler({**state_to_arrays(gen.state_dict(), "gen"), **hyper},
                                                          seed + 7919))
            if score < best[0]:
                best = (score, it + 1, {k: v.detach().cpu().clone() for k, v in gen.state_dict().items()}, dev)
            if log is not None:
                log.info("generator iteration %d/%d: Wasserstein estimate %.4f, held-out score %.3f (occupancy %+.3f, "
                         "RMS over regions %.3f, cluster size %+.3f)", it + 1, iters, w_dist, score,
                         dev["occupancy_deviation"], dev["occupancy_rms_deviation"], dev["cluster_size_deviation"])
        elif log is not None and (it % max(iters // 10, 1) == 0 or it == iters - 1):
            log.info("generator iteration %d/%d: Wasserstein estimate %.4f", it + 1, iters, w_dist)
    state = best[2] if best[2] is not None else gen.state_dict()
    arrays = {**state_to_arrays(state, "gen"), **hyper}
    per_layer = pixel_occupancy(pixels, n_events, geom, PXD_NV, PXD_NU, scale)
    sensors = np.bincount(geom.layer[geom.is_pxd] - 1, minlength=N_LAYERS)
    figures = {"clusters": float(crops.shape[0]), "wasserstein": w_dist, "seconds": time.perf_counter() - t0,
               "input_occupancy": float(np.average(per_layer, weights=sensors)), "kept_iteration": float(best[1])}
    if monitor is not None:
        figures.update(heldout_score=best[0], **{f"heldout_{k}": v for k, v in best[3].items()})
    return arrays, figures


def untrained_arrays(cfg: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Payload arrays of a freshly initialised (untrained) generator (tests: the validation must fail)."""
    torch = set_up_torch(int(cfg["seed"]), int(cfg["threads"]))
    gen = build_generator(int(cfg["latent"]), int(cfg["hidden"]), int(cfg["patch_v"]), int(cfg["patch_u"]))
    arrays = state_to_arrays(gen.state_dict(), "gen")
    del torch
    arrays.update(hyper_to_arrays({"latent": cfg["latent"], "hidden": cfg["hidden"], "patch_v": cfg["patch_v"],
                                   "patch_u": cfg["patch_u"], "n_layers": N_LAYERS, "adc_scale": cfg["adc_scale"],
                                   "maps": MAPS, "kernel": KERNEL, "format_version": FORMAT_VERSION}))
    return arrays


class GanBackground:
    """The generator payload as a PXD background source: ``(rng, n_events, geom) -> fired pixels``
    (``event`` 0-based, ``sensor``, ``pixel``, ``adc``), the same layout as the toy full simulation.

    Inference with numpy (scipy.special: P(z > t)), no torch: the generator is translation
    equivariant, so a whole sensor is one image of 150 x 50 pixels whose seed map is 154 x 54 positions,
    each seed row conditioned on the region (layer x v band of ``patch_v`` rows) of its pixel row.  Seeds
    are drawn directly: per seed row a binomial number of seeds (probability ``P(z > t_region)``), at
    uniform columns -- the distribution of the seeds of the module's dense noise map (up to two seeds on one
    position, which the dense map cannot make: a fraction ~0.2 % of the seeds), at a cost that grows with the
    seeds, not the pixels.  Random numbers come from ``rng``, so the output is reproducible for a seed."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch: int = 512) -> None:
        hp = hyper_from_arrays(arrays, ("format_version",), PAYLOAD)
        if int(hp["format_version"]) != FORMAT_VERSION:
            raise PayloadError(f"payload {PAYLOAD}: format_version {int(hp['format_version'])}, expected "
                               f"{FORMAT_VERSION} (a generator of an older b2luca: retrain it)")
        hp = hyper_from_arrays(arrays, HYPER, PAYLOAD)
        self.latent, self.pv, self.pu = int(hp["latent"]), int(hp["patch_v"]), int(hp["patch_u"])
        self.hidden, self.n_cond = int(hp["hidden"]), regions(self.pv, self.pu)[2]
        if int(hp["maps"]) != MAPS or int(hp["kernel"]) != KERNEL:
            raise PayloadError(f"payload {PAYLOAD}: maps {int(hp['maps'])}, kernel {int(hp['kernel'])}; this b2luca "
                               f"generates with maps {MAPS}, kernel {KERNEL}")
        self.scale = float(hp["adc_scale"])
        self.batch = int(batch)  # images (sensors or patches) painted at a time
        self._arrays = arrays
        self._weights = self._numpy_weights()

    def _numpy_weights(self) -> dict[str, np.ndarray]:
        """The generator's weights as float32 arrays (shapes checked: one PayloadError naming every bad array)."""
        shapes = {"threshold": (self.n_cond,), "shape_0_weight": (self.hidden, self.latent),
                  "shape_0_bias": (self.hidden,), "shape_2_weight": (MAPS, self.hidden), "shape_2_bias": (MAPS,),
                  "stamp_weight": (1, MAPS, KERNEL, KERNEL)}
        problems, w = [], {}
        for name, shape in shapes.items():
            key = f"gen_{name}"
            if key not in self._arrays:
                problems.append(f"{key} missing")
            elif tuple(np.shape(self._arrays[key])) != shape:
                problems.append(f"{key} has shape {np.shape(self._arrays[key])}, the model expects {shape}")
            else:
                w[name] = np.asarray(self._arrays[key], np.float32)
        if problems:
            raise PayloadError(f"payload {PAYLOAD}: " + "; ".join(problems))
        return {"threshold": w["threshold"].astype(np.float64), "w0": np.ascontiguousarray(w["shape_0_weight"].T),
                "b0": w["shape_0_bias"], "w2": np.ascontiguousarray(w["shape_2_weight"].T), "b2": w["shape_2_bias"],
                "stamp": w["stamp_weight"][0].reshape(MAPS, KERNEL * KERNEL)}

    @property
    def thresholds(self) -> np.ndarray:
        """A copy of the seed threshold per region (n_cond,) float64."""
        return self._weights["threshold"].copy()

    @thresholds.setter
    def thresholds(self, value: np.ndarray) -> None:
        value = np.asarray(value, np.float64)
        if value.shape != (self.n_cond,):
            raise ValueError(f"{self.n_cond} seed thresholds expected, got shape {value.shape}")
        self._weights["threshold"] = value.copy()

    def paint(self, height: int, width: int, seeds: tuple[np.ndarray, np.ndarray, np.ndarray],
              z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixel keys ``(image * height + row) * width + column``, sorted and unique; their values before the
        ReLU and the ADC scale) of seeds at (image, row, column) of the seed map (height + KERNEL - 1, width +
        KERNEL - 1) with shape latents ``z``: only the pixels the stamps touch (sparse)."""
        w = self._weights
        h = z @ w["w0"]
        h += w["b0"]
        np.maximum(h, 0.2 * h, out=h)  # LeakyReLU(0.2)
        coef = h @ w["w2"]
        coef += w["b2"]
        stamps = coef @ w["stamp"]  # (seeds, KERNEL * KERNEL): cross-correlation, out[j - a, i - b] += w[a, b]
        a, b = np.divmod(np.arange(KERNEL * KERNEL), KERNEL)
        img, row, col = seeds
        rows = np.asarray(row)[:, None] - a[None, :]
        cols = np.asarray(col)[:, None] - b[None, :]
        ok = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        key = ((np.asarray(img, np.int64)[:, None] * height + rows) * width + cols)[ok]
        order = np.argsort(key, kind="stable")
        key, val = key[order], stamps[ok][order]
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.zeros(0, np.int64)
        return key[first], (np.add.reduceat(val, first) if key.size else np.zeros(0, np.float32))

    def render(self, n: int, height: int, width: int, seeds: tuple[np.ndarray, np.ndarray, np.ndarray],
               z: np.ndarray) -> np.ndarray:
        """Images (n, height, width) before the ADC scale (see :meth:`paint`): the torch module's
        :meth:`render` (sums in another order: ~1e-6 of a pixel's value)."""
        key, val = self.paint(height, width, seeds, z)
        out = np.zeros(n * height * width, np.float32)
        out[key] = np.maximum(val, 0)
        return out.reshape(n, height, width)

    def _draw(self, rng: np.random.Generator, row_region: np.ndarray, width: int
              ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """Seeds of images whose seed rows have the regions ``row_region`` (n, seed rows) and ``width`` + KERNEL
        - 1 seed columns: ((image, row, column), shape latents float32)."""
        cols = width + KERNEL - 1
        t = self._weights["threshold"][row_region]
        p = ndtr(-t)  # P(z > t) of a standard normal
        counts = rng.binomial(cols, p)
        flat = np.repeat(np.arange(counts.size), counts.reshape(-1))
        img, row = np.divmod(flat, row_region.shape[1])
        col = rng.integers(0, cols, flat.size)
        z = rng.standard_normal((flat.size, self.latent), dtype=np.float32)
        return (img, row, col), z

    def images(self, rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
        """Generated ADC images (N, patch_v, patch_u) for the regions ``region`` (N,) (one patch of the training)."""
        region = np.asarray(region, np.int64)
        out = np.empty((region.size, self.pv, self.pu), np.float32)
        for s in range(0, region.size, self.batch):
            r = region[s:s + self.batch]
            seeds, z = self._draw(rng, np.repeat(r[:, None], self.pv + KERNEL - 1, axis=1), self.pu)
            out[s:s + r.size] = self.render(r.size, self.pv, self.pu, seeds, z) * self.scale
        return out

    def sensor_regions(self, layer: np.ndarray) -> np.ndarray:
        """Regions (sensors, PXD_NV + KERNEL - 1) of the seed rows of whole sensors of PXD ``layer`` (0-based):
        the v band of the pixel row a seed row is centred on (clipped to the sensor)."""
        nb_v = regions(self.pv, self.pu)[0]
        band = np.clip(np.arange(PXD_NV + KERNEL - 1) - KERNEL // 2, 0, PXD_NV - 1) // self.pv
        return np.asarray(layer, np.int64)[:, None] * nb_v + band[None, :]

    def __call__(self, rng: np.random.Generator, n_events: int, geom: Geometry,
                 hits: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Background pixels of ``n_events`` events, each PXD sensor one whole generated image.  With ``hits``
        (PXD hits: ``event`` 0-based, ``sensor``, ...) only the sensors with a hit are generated (the others
        cannot reach a track)."""
        pxd = np.flatnonzero(geom.is_pxd)
        n_sens = pxd.size
        if hits is None:
            pairs = np.arange(n_events * n_sens)
        else:
            pos = np.searchsorted(pxd, geom.sensor_index(np.asarray(hits["sensor"])))
            pairs = np.unique(np.asarray(hits["event"], np.int64) * n_sens + pos)
        layer = geom.layer[pxd] - 1
        parts: dict[str, list[np.ndarray]] = {"pair": [], "pixel": [], "adc": []}
        for s in range(0, pairs.size, self.batch):
            chunk = pairs[s:s + self.batch]
            seeds, z = self._draw(rng, self.sensor_regions(layer[chunk % n_sens]), PXD_NU)
            key, val = self.paint(PXD_NV, PXD_NU, seeds, z)
            adc = val * self.scale
            on = adc > ADC_THRESHOLD
            k, pixel = np.divmod(key[on], PXD_NV * PXD_NU)
            parts["pair"].append(chunk[k])
            parts["pixel"].append(pixel)
            parts["adc"].append(adc[on])
        pair = np.concatenate(parts["pair"]) if parts["pair"] else np.zeros(0, np.int64)
        ev, s_pos = np.divmod(pair, n_sens)
        return {"event": ev.astype(np.int64), "sensor": geom.sensor_id[pxd[s_pos]].astype(np.int32),
                "pixel": (np.concatenate(parts["pixel"]) if parts["pixel"] else np.zeros(0)).astype(np.int32),
                "adc": (np.concatenate(parts["adc"]) if parts["adc"] else np.zeros(0)).astype(np.float32)}


__all__ = ["ADC_THRESHOLD", "GanBackground", "PAYLOAD", "build_critic", "build_generator", "cluster_crops", "fired",
           "fired_per_patch", "match_occupancy", "region_occupancy", "regions", "sensor_patches", "train",
           "untrained_arrays"]
