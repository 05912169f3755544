"""PXD beam-background GAN (Belle II): a Wasserstein GAN with gradient penalty that generates PXD
background pixel images, trained on random-trigger background; the generator is the payload.

Published setup: 250 x 768 pixel sensor images, 96 normal random inputs to the generator, 5 critic
updates per generator update, Adam at 1e-4 decaying linearly to 0, PyTorch.  Scaled to the toy and to
two CPU cores: the toy sensor has 150 (v) x 50 (u) pixels; the GAN generates *patches* of
``patch_v`` x ``patch_u`` pixels conditioned on the region (PXD layer x v band, one-hot: the occupancy
depends on both); a sensor is tiled by independent patches (the demo: 15 x 10, ten v bands x five u
columns).  ``patch_v=150, patch_u=50`` is the whole sensor (one region per layer).
Pixel values are the ADC / ``adc_scale``; a generated pixel fires above the ADC threshold of the toy
(5 ADC).  Generator: [z (96), region one-hot] -> dense ``hidden`` x 2 (LeakyReLU) -> 4 maps of the
patch -> 3x3 convolution -> ReLU (sparse images with exact zeros; the convolution makes neighbouring
pixels fire together).  Critic: [pixels, region one-hot] -> dense ``hidden`` x 2 (LeakyReLU) -> 1,
no normalisation.  Fully connected rather than the published convolutional stacks: on two CPU cores
it is what trains in a minute.  Gradient penalty weight ``gp_lambda`` (10), Adam betas (0.5, 0.9),
learning rate decaying linearly to 0 over the run.  Issue 15: the critic sees the generated images
thresholded as the detector reads them (:func:`fired`, straight-through gradient); the payload is the
snapshot that best reproduces held-out events (:mod:`.gan_monitor`); sensors are tiled with a random
phase per (event, sensor) (:meth:`GanBackground.__call__`).  Determinism: seeds +
``torch.use_deterministic_algorithms``; latent noise and batches come from a seeded generator, so a
rerun gives the same payload (on the same device and thread count).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from .gan_monitor import HeldOutMonitor
from .model_payload import hyper_from_arrays, hyper_to_arrays, load_state, state_to_arrays
from .torch_setup import require_torch, resolve_device, set_up_torch
from ..errors import PayloadError
from ..reco.geometry import PXD_NU, PXD_NV, Geometry
from ..sim.pxd_overlay import PICKUP_WINDOW

PAYLOAD = "PXDBackgroundGAN"
FORMAT_VERSION = 1
ADC_THRESHOLD = 5.0  # the toy PXD's pixel threshold (b2luca/sim/pxd_background.py)
HYPER = ("latent", "hidden", "patch_v", "patch_u", "n_layers", "adc_scale", "format_version")
N_LAYERS = 2  # PXD layers 1 and 2
MAPS = 4  # feature maps before the generator's final 3x3 convolution
DENSE_CONV_MAX = 4_000_000  # elements of the largest convolution matrix used at inference (16 MB)


def regions(patch_v: int, patch_u: int) -> tuple[int, int, int]:
    """(v bands, u columns, conditions = layers x v bands) of a patch size that tiles the toy sensor."""
    if PXD_NV % patch_v or PXD_NU % patch_u:
        raise ValueError(f"patch {patch_v} x {patch_u} must tile the {PXD_NV} x {PXD_NU} toy PXD sensor")
    return PXD_NV // patch_v, PXD_NU // patch_u, N_LAYERS * (PXD_NV // patch_v)


def build_generator(latent: int, hidden: int, patch_v: int, patch_u: int) -> Any:
    """Generator: [z (latent), region one-hot] -> dense hidden x 2 -> MAPS maps of (patch_v, patch_u) -> 3x3
    convolution (neighbouring pixels correlated: clusters) -> ReLU: an image >= 0 with exact zeros."""
    torch = require_torch("the PXD background GAN")
    nn = torch.nn
    n_cond = regions(patch_v, patch_u)[2]

    class Generator(nn.Module):  # type: ignore[name-defined]  # torch is imported lazily
        """(latent + regions) -> hidden -> hidden -> MAPS x pixels -> 3x3 convolution -> ReLU (exact zeros)."""

        def __init__(self) -> None:
            super().__init__()
            self.n_cond, self.pv, self.pu = n_cond, patch_v, patch_u
            self.net = nn.Sequential(nn.Linear(latent + n_cond, hidden), nn.LeakyReLU(0.2),
                                     nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                     nn.Linear(hidden, MAPS * patch_v * patch_u), nn.LeakyReLU(0.2))
            self.conv = nn.Conv2d(MAPS, 1, 3, padding=1)

        def forward(self, z, cond):  # noqa: D401 - torch convention
            onehot = torch.nn.functional.one_hot(cond, self.n_cond).to(z.dtype)
            x = self.net(torch.cat([z, onehot], 1)).view(-1, MAPS, self.pv, self.pu)
            return torch.relu(self.conv(x))[:, 0]

    return Generator()


def build_critic(hidden: int, patch_v: int, patch_u: int) -> Any:
    """Critic: [image pixels, region one-hot] -> hidden -> hidden -> score (no normalisation: WGAN-GP)."""
    torch = require_torch("the PXD background GAN")
    nn = torch.nn
    n_cond = regions(patch_v, patch_u)[2]

    class Critic(nn.Module):  # type: ignore[name-defined]
        """Fully connected, LeakyReLU 0.2."""

        def __init__(self) -> None:
            super().__init__()
            self.n_cond = n_cond
            self.net = nn.Sequential(nn.Linear(patch_v * patch_u + n_cond, hidden), nn.LeakyReLU(0.2),
                                     nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

        def forward(self, x, cond):  # noqa: D401
            onehot = torch.nn.functional.one_hot(cond, self.n_cond).to(x.dtype)
            return self.net(torch.cat([x.flatten(1), onehot], 1))[:, 0]

    return Critic()


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


def fired_fraction(images: np.ndarray, adc_scale: float, rows: int = 65536) -> float:
    """Fraction of the pixels of ``images`` (N, ...) = ADC / ``adc_scale`` above the ADC threshold, counted
    ``rows`` images at a time: the same value as ``np.mean(images * adc_scale > ADC_THRESHOLD)`` without its
    two temporaries of the whole array (at the demo 450 MB, whose page faults cost ~1 CPU s: issue 15)."""
    flat = images.reshape(images.shape[0], -1)
    n = sum(int(np.count_nonzero(flat[s:s + rows] * adc_scale > ADC_THRESHOLD)) for s in range(0, flat.shape[0], rows))
    return n / flat.size if flat.size else float("nan")


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
    images, region = sensor_patches(pixels, n_events, geom, pv, pu, scale)
    n_cond = regions(pv, pu)[2]
    # every holdout_every-th event is held out of the training: the monitor picks the snapshot on it
    every, eval_every = int(cfg.get("holdout_every", 0)), int(cfg.get("eval_every", 0))
    held = np.zeros(images.shape[0], bool)
    if eval_every > 0 and every > 1 and n_events >= 2 * every:
        held = (np.arange(images.shape[0]) // (images.shape[0] // n_events)) % every == every - 1
    else:
        eval_every = 0
    real, cond_all = torch.from_numpy(images).to(device), torch.from_numpy(region).to(device)
    train_rows = torch.from_numpy(np.flatnonzero(~held)).to(device)  # no copy of the (N, pv, pu) images
    monitor = (HeldOutMonitor(torch, torch.from_numpy(images[held]), torch.from_numpy(region[held]), n_cond,
                              ADC_THRESHOLD / scale, latent, int(cfg.get("eval_per_region", 500)), seed, device)
               if eval_every > 0 else None)
    gen, critic = build_generator(latent, ch, pv, pu).to(device), build_critic(ch, pv, pu).to(device)
    betas = (float(cfg["beta1"]), float(cfg["beta2"]))
    opt_g = torch.optim.Adam(gen.parameters(), lr=float(cfg["learning_rate"]), betas=betas)
    opt_c = torch.optim.Adam(critic.parameters(), lr=float(cfg["learning_rate"]), betas=betas)
    iters, n_critic, batch = int(cfg["generator_iterations"]), int(cfg["critic_updates"]), int(cfg["batch_size"])
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, _lr_lambda(iters))
    sched_c = torch.optim.lr_scheduler.LambdaLR(opt_c, _lr_lambda(iters * n_critic))
    g = torch.Generator(device="cpu").manual_seed(seed)
    lam = float(cfg["gp_lambda"])
    thr = ADC_THRESHOLD / scale
    w_dist = 0.0
    best: tuple[float, int, Any, dict[str, float]] = (np.inf, iters, None, {})
    for it in range(iters):
        for _ in range(n_critic):
            idx = train_rows[torch.randint(0, train_rows.numel(), (batch,), generator=g).to(device)]
            x, c = real[idx], cond_all[idx]
            z = torch.randn(batch, latent, generator=g).to(device)
            with torch.no_grad():
                fake = fired(gen(z, c), thr)
            eps = torch.rand(batch, 1, 1, generator=g).to(device)
            mix = (eps * x + (1 - eps) * fake).requires_grad_(True)
            grad = torch.autograd.grad(critic(mix, c).sum(), mix, create_graph=True)[0]
            gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            d_real, d_fake = critic(x, c).mean(), critic(fake, c).mean()
            loss_c = d_fake - d_real + lam * gp
            opt_c.zero_grad()
            loss_c.backward()
            opt_c.step()
            sched_c.step()
            w_dist = float((d_real - d_fake).item())
        c = torch.randint(0, n_cond, (batch,), generator=g).to(device)
        z = torch.randn(batch, latent, generator=g).to(device)
        loss_g = -critic(fired(gen(z, c), thr), c).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        sched_g.step()
        if monitor is not None and ((it + 1) % eval_every == 0 or it == iters - 1):
            score, dev = monitor.score(gen)
            if score < best[0]:
                best = (score, it + 1, {k: v.detach().cpu().clone() for k, v in gen.state_dict().items()}, dev)
            if log is not None:
                log.info("generator iteration %d/%d: Wasserstein estimate %.4f, held-out score %.3f (occupancy %+.3f, "
                         "RMS over regions %.3f, cluster size %+.3f)", it + 1, iters, w_dist, score,
                         dev["occupancy_deviation"], dev["occupancy_rms_deviation"], dev["cluster_size_deviation"])
        elif log is not None and (it % max(iters // 10, 1) == 0 or it == iters - 1):
            log.info("generator iteration %d/%d: Wasserstein estimate %.4f", it + 1, iters, w_dist)
    state = best[2] if best[2] is not None else gen.state_dict()
    arrays = state_to_arrays(state, "gen")
    arrays.update(hyper_to_arrays({"latent": latent, "hidden": ch, "patch_v": pv, "patch_u": pu,
                                   "n_layers": N_LAYERS, "adc_scale": scale, "format_version": FORMAT_VERSION}))
    figures = {"patches": float(images.shape[0]), "wasserstein": w_dist, "seconds": time.perf_counter() - t0,
               "input_occupancy": fired_fraction(images, scale), "kept_iteration": float(best[1])}
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
                                   "format_version": FORMAT_VERSION}))
    return arrays


class GanBackground:
    """The generator payload as a PXD background source: ``(rng, n_events, geom) -> fired pixels``
    (``event`` 0-based, ``sensor``, ``pixel``, ``adc``), the same layout as the toy full simulation.
    Latent inputs come from ``rng`` (numpy), so the output is reproducible for a seed."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch: int = 8192, threads: int | None = None) -> None:
        hp = hyper_from_arrays(arrays, HYPER, PAYLOAD)
        if int(hp["format_version"]) != FORMAT_VERSION:
            raise ValueError(f"payload {PAYLOAD}: format_version {int(hp['format_version'])}, expected {FORMAT_VERSION}")
        self.latent, self.pv, self.pu = int(hp["latent"]), int(hp["patch_v"]), int(hp["patch_u"])
        self.hidden, self.n_cond = int(hp["hidden"]), regions(self.pv, self.pu)[2]
        self.scale = float(hp["adc_scale"])
        self.batch = int(batch)
        self._arrays, self._threads, self._model = arrays, threads, None
        # the patch sizes used (demo: 15 x 10) evaluate with numpy: no torch import (~1.5 s of a validation
        # job), and numpy's float32 matrix products are ~1.5x faster than torch's Linear on one CPU thread
        self._weights = self._numpy_weights() if self._dense_conv else None
        if self._weights is None:
            _ = self.model  # the whole sensor: torch's convolution (the dense matrix would be ~1 GB); checks the payload

    @property
    def _dense_conv(self) -> bool:
        return MAPS * (self.pv * self.pu) ** 2 <= DENSE_CONV_MAX

    @property
    def model(self) -> Any:
        """The generator as a torch module (built on first use)."""
        if self._model is None:
            torch = require_torch("the PXD background GAN")
            if self._threads is not None:  # one thread: OpenMP threads spin on a busy machine
                torch.set_num_threads(max(1, int(self._threads)))
            self._model = load_state(build_generator(self.latent, self.hidden, self.pv, self.pu), self._arrays, "gen",
                                     PAYLOAD)
        return self._model

    def _numpy_weights(self) -> dict[str, np.ndarray]:
        """The generator's weights as float32 arrays laid out for :meth:`_forward_numpy` (shapes checked: one
        PayloadError naming every bad array), the 3x3 convolution (MAPS maps -> 1) as one dense matrix."""
        n_map = MAPS * self.pv * self.pu
        shapes = {"net_0_weight": (self.hidden, self.latent + self.n_cond), "net_0_bias": (self.hidden,),
                  "net_2_weight": (self.hidden, self.hidden), "net_2_bias": (self.hidden,),
                  "net_4_weight": (n_map, self.hidden), "net_4_bias": (n_map,), "conv_weight": (1, MAPS, 3, 3),
                  "conv_bias": (1,)}
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
        # conv2d (cross-correlation, padding 1): out[v, u] += w[m, a, b] * in[m, v + a - 1, u + b - 1]
        conv = np.zeros((MAPS, self.pv, self.pu, self.pv, self.pu), np.float32)
        ov, ou = np.meshgrid(np.arange(self.pv), np.arange(self.pu), indexing="ij")
        for a in range(3):
            for b in range(3):
                iv, iu = ov + a - 1, ou + b - 1
                ok = (iv >= 0) & (iv < self.pv) & (iu >= 0) & (iu < self.pu)
                conv[:, iv[ok], iu[ok], ov[ok], ou[ok]] = w["conv_weight"][0, :, a, b][:, None]
        w0 = w["net_0_weight"]
        return {"z": np.ascontiguousarray(w0[:, :self.latent].T),  # (latent, hidden)
                "cond": np.ascontiguousarray(w0[:, self.latent:].T + w["net_0_bias"]),  # one-hot row + bias
                "w2": np.ascontiguousarray(w["net_2_weight"].T), "b2": w["net_2_bias"],
                "w4": np.ascontiguousarray(w["net_4_weight"].T), "b4": w["net_4_bias"],
                "conv": conv.reshape(n_map, self.pv * self.pu), "conv_bias": w["conv_bias"]}

    def _forward_numpy(self, z: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """The generator's forward pass with numpy, float32 (the torch module's function; sums in another
        order: ~1e-6 of a pixel's value): (N, patch_v, patch_u) before the ADC scale."""
        w = self._weights
        assert w is not None
        h = z @ w["z"]
        h += w["cond"][cond]
        for name in ("w2", "w4"):
            np.maximum(h, 0.2 * h, out=h)  # LeakyReLU(0.2)
            h = h @ w[name]
            h += w["b" + name[1]]
        np.maximum(h, 0.2 * h, out=h)
        out = h @ w["conv"]
        out += w["conv_bias"]
        np.maximum(out, 0, out=out)
        return out.reshape(-1, self.pv, self.pu)

    def images(self, rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
        """Generated ADC images (N, patch_v, patch_u) for the regions ``region`` (N,)."""
        out = np.empty((region.size, self.pv, self.pu), np.float32)
        for s in range(0, region.size, self.batch):
            r = np.asarray(region[s:s + self.batch], np.int64)
            # float32 draws: 3x cheaper than float64 + a cast (~2 s of the validation's 660k patches)
            z = rng.standard_normal((r.size, self.latent), dtype=np.float32)
            if self._weights is not None:
                out[s:s + r.size] = self._forward_numpy(z, r) * self.scale
            else:
                torch = require_torch("the PXD background GAN")
                with torch.no_grad():
                    out[s:s + r.size] = self.model(torch.from_numpy(z), torch.from_numpy(r)).numpy() * self.scale
        return out

    def __call__(self, rng: np.random.Generator, n_events: int, geom: Geometry,
                 hits: Mapping[str, np.ndarray] | None = None, window: int = PICKUP_WINDOW) -> dict[str, np.ndarray]:
        """Background pixels of ``n_events`` events.  With ``hits`` (PXD hits: ``event`` 0-based,
        ``sensor``, ``u``, ``v``) only the patches within ``window`` pixels of a hit are generated (the
        others cannot reach a track: an overlay needs no more, and it is much cheaper).

        Tiling with a random phase (issue 15): the patch rows of each (event, sensor) start at
        ``k * patch_v - o``, ``o`` uniform in [0, patch_v) (``nb_v + 1`` patches along v, the end ones cut
        at the sensor edge), each patch conditioned on the v band of its centre row.  The dense generator
        is not translation-invariant within a patch (its clusters favour some rows); with one fixed tiling
        that pattern repeated every ``patch_v`` rows, and a hit map in 10-row bins saw a zig-zag (48 % off
        at 200 runs).  The random phase spreads it evenly over the rows."""
        nb_v, nb_u, _ = regions(self.pv, self.pu)
        pxd = np.flatnonzero(geom.is_pxd)
        layer = geom.layer[pxd] - 1
        n_sens = pxd.size
        phased = nb_v > 1  # one patch over the whole sensor height: nothing to shift
        n_k = nb_v + 1 if phased else nb_v
        offset = rng.integers(0, self.pv, (n_events, n_sens)) if phased else np.zeros((n_events, n_sens), np.int64)
        first_row = np.arange(n_k)[None, None, :] * self.pv - offset[:, :, None]  # (events, sensors, k)
        band = np.clip((first_row + (self.pv - 1) // 2) // self.pv, 0, nb_v - 1)
        region = np.broadcast_to((layer[None, :, None] * nb_v + band)[..., None], (n_events, n_sens, n_k, nb_u))
        inside = np.broadcast_to(((first_row < PXD_NV) & (first_row + self.pv > 0))[..., None], region.shape)
        if hits is None:
            todo = np.flatnonzero(inside.reshape(-1))
        else:
            sidx = geom.sensor_index(np.asarray(hits["sensor"]))
            iv, iu = np.divmod(geom.pxd_pixel(sidx, np.asarray(hits["u"], float), np.asarray(hits["v"], float)), PXD_NU)
            pos = np.searchsorted(pxd, sidx)
            ev_h = np.asarray(hits["event"], np.int64)
            need = np.zeros(region.shape, bool)
            half = window // 2
            for dv in (-half, half):
                for du in (-half, half):
                    k = (np.clip(iv + dv, 0, PXD_NV - 1) + offset[ev_h, pos]) // self.pv
                    bu = np.clip(iu + du, 0, PXD_NU - 1) // self.pu
                    need[ev_h, pos, k, bu] = True
            todo = np.flatnonzero(need.reshape(-1))
        images = self.images(rng, region.reshape(-1)[todo])
        # only the generated patches are looked at (a full event x sensor image array is ~1 GB for the
        # validation's events); the fired pixels come out in (event, sensor, pixel) order as from a full image
        t, pv_in, pu_in = np.nonzero(images > ADC_THRESHOLD)
        rest, bu = np.divmod(todo[t], nb_u)
        rest, k = np.divmod(rest, n_k)
        ev, s = np.divmod(rest, n_sens)
        row = k * self.pv - offset[ev, s] + pv_in
        keep = (row >= 0) & (row < PXD_NV)  # the end patches reach beyond the sensor
        adc = images[t, pv_in, pu_in][keep]
        ev, s = ev[keep], s[keep]
        pixel = row[keep] * PXD_NU + bu[keep] * self.pu + pu_in[keep]
        order = np.lexsort((pixel, s, ev))
        return {"event": ev[order].astype(np.int64), "sensor": geom.sensor_id[pxd[s[order]]].astype(np.int32),
                "pixel": pixel[order].astype(np.int32), "adc": adc[order].astype(np.float32)}


__all__ = ["ADC_THRESHOLD", "GanBackground", "PAYLOAD", "build_critic", "build_generator", "fired", "fired_fraction",
           "regions", "sensor_patches", "train", "untrained_arrays"]
