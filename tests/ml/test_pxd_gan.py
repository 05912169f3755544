"""PXDBackgroundGAN: the PXD background overlay, determinism and the payload round trip in a fresh
process, the validation (passes for a generator that reproduces the background, fails for an untrained
one and when the GAN's pull widths differ), and the one-line error without PyTorch."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from b2luca.conditions import DatabaseChain, LocalDatabase  # noqa: E402
from b2luca.contract import CalibrationJob  # noqa: E402
from b2luca.iov import ExpRun, IoV  # noqa: E402
from b2luca.reco.geometry import nominal_geometry  # noqa: E402

EXPERIMENT = 26
TINY = {"patch_v": 15, "patch_u": 10, "hidden": 16, "generator_iterations": 20, "learning_rate": 0.001,
        "threads": 1, "device": "cpu", "min_events": 5}


def _hits(geom, n=200, seed=3):
    """Fake PXD track hits (event 1..5) on the first PXD sensors."""
    rng = np.random.default_rng(seed)
    pxd = np.flatnonzero(geom.is_pxd)
    s = pxd[rng.integers(0, 4, n)]
    return {"event": rng.integers(1, 6, n), "sensor": geom.sensor_id[s], "u": rng.uniform(-3, 3, n),
            "v": rng.uniform(-10, 10, n), "charge": rng.gamma(4.0, 12.0, n), "pixel": np.zeros(n, np.int32)}


def test_overlay_merges_only_nearby_background_pixels():
    from b2luca.sim.pxd_overlay import overlay_pxd_hits, pixel_centre

    geom = nominal_geometry()
    hits = _hits(geom)
    sidx = geom.sensor_index(hits["sensor"][:1])
    pix = int(geom.pxd_pixel(sidx, hits["u"][:1], hits["v"][:1])[0])
    near, far = pix + 1, (pix + 40 * 50) % 7500  # one column over / 40 rows away
    bkg = {"event": np.array([hits["event"][0]] * 2), "sensor": np.array([hits["sensor"][0]] * 2),
           "pixel": np.array([near, far]), "adc": np.array([20.0, 20.0])}
    out = overlay_pxd_hits(hits, bkg, geom)
    uc, vc = pixel_centre(geom, sidx, np.array([near]))
    q = hits["charge"][0]
    assert out["u"][0] == pytest.approx((q * hits["u"][0] + 20 * uc[0]) / (q + 20))
    assert out["v"][0] == pytest.approx((q * hits["v"][0] + 20 * vc[0]) / (q + 20))
    assert out["charge"][0] == pytest.approx(q + 20)
    other = np.ones(hits["u"].size, bool)
    other[0] = False
    other &= ~((hits["event"] == hits["event"][0]) & (hits["sensor"] == hits["sensor"][0]))
    np.testing.assert_array_equal(out["u"][other], hits["u"][other])  # other events/sensors untouched
    empty = {k: v[:0] for k, v in bkg.items()}
    np.testing.assert_array_equal(overlay_pxd_hits(hits, empty, geom)["u"], hits["u"])


def test_simulate_sample_background_modes():
    """'none' is the old simulation exactly; 'simulated' moves PXD hits only; a bad mode names the choices."""
    from b2luca.sim import make_truth, simulate_sample

    geom = nominal_geometry()
    truth = make_truth(5, geom)
    base = simulate_sample("hadron_calib", 30, np.random.default_rng(1), truth, geom)
    none = simulate_sample("hadron_calib", 30, np.random.default_rng(1), truth, geom, pxd_background_mode="none")
    sim = simulate_sample("hadron_calib", 30, np.random.default_rng(1), truth, geom, pxd_background_mode="simulated")
    for tree in base.raw:
        for k in base.raw[tree]:
            np.testing.assert_array_equal(none.raw[tree][k], base.raw[tree][k])
            if tree != "pxd" or k not in ("u", "v", "charge"):
                np.testing.assert_array_equal(sim.raw[tree][k], base.raw[tree][k])
    moved = sim.raw["pxd"]["u"] != base.raw["pxd"]["u"]
    assert 0 < moved.mean() < 0.8
    with pytest.raises(ValueError, match="none, simulated, gan"):
        simulate_sample("hadron_calib", 5, np.random.default_rng(1), truth, geom, pxd_background_mode="bogus")


@pytest.fixture(scope="module")
def background():
    from b2luca.sim.pxd_background import pxd_background

    geom = nominal_geometry()
    return pxd_background(np.random.default_rng(11), 20, geom), 20


def test_training_deterministic_and_payload_round_trip_in_fresh_process(background, tmp_path):
    pytest.importorskip("torch")
    from b2luca.ml.pxd_gan import GanBackground, train
    from calibrations.pxd_background_gan import settings

    geom = nominal_geometry()
    cfg = {**settings.expert_config, **TINY}
    pixels, n = background
    a1, _ = train(pixels, n, geom, cfg)
    a2, _ = train(pixels, n, geom, cfg)
    assert set(a1) == set(a2)
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k], err_msg=k)
    db = LocalDatabase(tmp_path / "db").create()
    db.store("PXDBackgroundGAN", a1, IoV(EXPERIMENT, 1, EXPERIMENT, 2))
    here = GanBackground(a1)(np.random.default_rng(7), 3, geom)
    out = tmp_path / "fresh.npz"
    code = (f"import sys, numpy as np; sys.path.insert(0, {str(REPO)!r})\n"
            "from b2luca.conditions import LocalDatabase\n"
            "from b2luca.ml.pxd_gan import GanBackground\n"
            "from b2luca.reco.geometry import nominal_geometry\n"
            f"db = LocalDatabase({str(tmp_path / 'db')!r})\n"
            "e = [x for x in db.entries() if x.name == 'PXDBackgroundGAN'][-1]\n"
            "g = GanBackground(db.read(e))\n"
            "img = g.images(np.random.default_rng(7), np.arange(40) % 20)\n"
            "d = g(np.random.default_rng(7), 3, nominal_geometry())\n"
            f"np.savez({str(out)!r}, img=img, **d)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    fresh = np.load(out)
    np.testing.assert_array_equal(fresh["img"], GanBackground(a1).images(np.random.default_rng(7), np.arange(40) % 20))
    for k in here:
        np.testing.assert_array_equal(fresh[k], here[k], err_msg=k)


def _validation_job(tmp_path: Path, arrays: dict, bucket_files: list) -> Path:
    job = tmp_path / "job"
    db = LocalDatabase(job / "caf_outputdb_results" / "PXDBackgroundGAN").create()
    db.store("PXDBackgroundGAN", arrays, IoV(EXPERIMENT, 1, EXPERIMENT, 2))
    (job / "input_data.json").write_text(json.dumps({"random_calib": [[str(p), [EXPERIMENT, 1]] for p in bucket_files]}))
    return job


@pytest.fixture(scope="module")
def random_files(tmp_path_factory):
    from b2luca.sim import simulate_bucket

    root = tmp_path_factory.mktemp("pxdgan")
    summary = simulate_bucket(bucket="pxdgan", experiment=EXPERIMENT, runs=[1, 2], seed=1617,
                              events={"random_calib": 40}, data_dir=root / "raw", conditions_dir=root / "cond")
    return [p for p in summary.files if "random_calib" in str(p)]


VALIDATION = {"track_events": 350, "max_events": 80}


def test_validation_passes_for_faithful_generator_fails_for_untrained(random_files, tmp_path, monkeypatch):
    """A generator that reproduces the background (the toy full simulation itself, other seeds) passes
    both parts; an untrained GAN fails, naming the failed image distributions."""
    pytest.importorskip("torch")
    from b2luca.ml import pxd_gan
    from b2luca.sim.pxd_background import pxd_background
    from calibrations.pxd_background_gan import settings
    from calibrations.validations import pxd_background_gan as validation

    untrained = pxd_gan.untrained_arrays({**settings.expert_config, **TINY})
    job = _validation_job(tmp_path, untrained, random_files)
    monkeypatch.chdir(job)
    verdict = validation.run_validation(str(job), str(job / "input_data.json"), [EXPERIMENT, 1, EXPERIMENT, 2],
                                        VALIDATION)
    assert not verdict.passed  # faint one-pixel clusters, the same seed threshold in every region
    assert "occupancy" in verdict.message and "cluster size" in verdict.message
    assert verdict.figures["d0_none_vs_simulated_sigma_pt0-0.2"] > 0  # part (b) ran too

    class Faithful:  # stands in for a perfectly trained generator
        def __init__(self, arrays):
            pass

        def __call__(self, rng, n_events, geom, hits=None):
            return pxd_background(rng, n_events, geom)

    monkeypatch.setattr(pxd_gan, "GanBackground", Faithful)
    verdict = validation.run_validation(str(job), str(job / "input_data.json"), [EXPERIMENT, 1, EXPERIMENT, 2],
                                        VALIDATION)
    assert verdict.passed, verdict.message
    assert (job / "pxd_background_gan.png").exists()
    for tag in ("pt0-0.2", "pt0.2-1"):
        assert max(verdict.figures[f"d0_none_vs_simulated_sigma_{tag}"],
                   verdict.figures[f"z0_none_vs_simulated_sigma_{tag}"]) > 3


def test_compare_pulls_fails_when_gan_widths_differ():
    from b2luca.sim.pxd_pulls import PT_BINS, PullWidth
    from calibrations.validations.pxd_background_gan import compare_pulls, settings

    def rows(gan_width):
        out = []
        for lo, hi in PT_BINS:
            for par in ("d0", "z0"):
                out += [PullWidth("simulated", par, lo, hi, 500, 1.5, 0.05), PullWidth("gan", par, lo, hi, 500, gan_width, 0.05),
                        PullWidth("none", par, lo, hi, 500, 1.0, 0.03)]
        return out

    assert compare_pulls(rows(1.52), dict(settings.expert_config))[1] == []
    reasons = compare_pulls(rows(1.1), dict(settings.expert_config))[1]
    assert len(reasons) == 4 and all("GAN" in r for r in reasons)


def test_calibration_without_torch_fails_before_reading_data(monkeypatch, tmp_path):
    from b2luca.errors import MLDependencyError
    from calibrations import pxd_background_gan

    monkeypatch.setitem(sys.modules, "torch", None)
    missing = [(tmp_path / "does_not_exist.root", ExpRun(EXPERIMENT, 1))]
    job = CalibrationJob(name="PXDBackgroundGAN", input_files={"random_calib": missing},
                         requested_iov=IoV(EXPERIMENT, 1, EXPERIMENT, 1),
                         expert_config=dict(pxd_background_gan.settings.expert_config),
                         output_db=LocalDatabase(tmp_path / "out").create(), database_chain=DatabaseChain([]),
                         work_dir=tmp_path, log=logging.getLogger("test"))
    with pytest.raises(MLDependencyError, match=r"install b2luca\[ml\]") as info:
        pxd_background_gan.calibrate(job)
    assert "\n" not in str(info.value) and "PXDBackgroundGAN" in str(info.value)


def test_config_pxd_background_gan_needs_a_payload(tmp_path):
    import yaml

    from b2luca.config import load_config
    from b2luca.errors import UserError

    doc = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    doc["calibrations"]["directory"] = str(REPO / "calibrations")
    doc["simulation"]["pxd_background"] = "gan"
    path = tmp_path / "bucket.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="simulation.pxd_background_payload: is required"):
        load_config(path)
    doc["simulation"]["pxd_background_payload"] = "gan.root"
    path.write_text(yaml.safe_dump(doc))
    sim = load_config(path).simulation
    assert sim is not None and sim.pxd_background == "gan" and sim.pxd_background_payload == tmp_path / "gan.root"


def test_numpy_inference_is_the_module_and_a_crop_is_a_stamp_as_painted():
    """The numpy painting (no torch at inference) gives the torch module's images for the same seeds and
    latents, and a single seed painted into an image is the module's cluster crop (the kernel flipped)."""
    torch = pytest.importorskip("torch")
    from b2luca.ml.model_payload import load_state
    from b2luca.ml.pxd_gan import KERNEL, GanBackground, build_generator, untrained_arrays
    from calibrations.pxd_background_gan import settings

    cfg = {**settings.expert_config, **TINY}
    arrays = untrained_arrays(cfg)
    gan = GanBackground(arrays)
    module = load_state(build_generator(gan.latent, gan.hidden, gan.pv, gan.pu), arrays, "gen", "PXDBackgroundGAN")
    rng = np.random.default_rng(2)
    n, m = 6, 40
    seeds = (rng.integers(0, n, m), rng.integers(0, gan.pv + KERNEL - 1, m), rng.integers(0, gan.pu + KERNEL - 1, m))
    z = rng.standard_normal((m, gan.latent)).astype(np.float32)
    with torch.no_grad():
        expected = module.render(n, tuple(torch.from_numpy(s) for s in seeds), torch.from_numpy(z)).numpy()
        crop = module.crops(1, None, torch.from_numpy(z[:1])).numpy()[0]
    assert expected.max() > 0.1
    np.testing.assert_allclose(gan.render(n, gan.pv, gan.pu, seeds, z), expected, atol=1e-5)
    half = KERNEL // 2  # a seed at seed-map (j, i) centres its crop on pixel (j - half, i - half)
    one = gan.render(1, 20, 20, (np.array([0]), np.array([10 + half]), np.array([8 + half])), z[:1])
    np.testing.assert_allclose(one[0, 10 - half:10 + half + 1, 8 - half:8 + half + 1], crop, atol=1e-6)
    assert one.sum() == pytest.approx(crop.sum(), rel=1e-5)


def test_sensor_pixels_are_those_of_dense_sensor_images(background):
    """GanBackground(rng, events) (sparse painting of whole sensors) gives the fired pixels of dense sensor
    images made from the same random draws, in (event, sensor, pixel) order, with the hit-sensor restriction."""
    pytest.importorskip("torch")
    from b2luca.ml.pxd_gan import ADC_THRESHOLD, GanBackground, untrained_arrays
    from b2luca.reco.geometry import PXD_NU, PXD_NV
    from calibrations.pxd_background_gan import settings

    geom = nominal_geometry()
    gan = GanBackground(untrained_arrays({**settings.expert_config, **TINY}))
    n_events = 3
    out = gan(np.random.default_rng(5), n_events, geom)
    pxd = np.flatnonzero(geom.is_pxd)
    rng = np.random.default_rng(5)
    pairs = np.arange(n_events * pxd.size)
    seeds, z = gan._draw(rng, gan.sensor_regions(geom.layer[pxd][pairs % pxd.size] - 1), PXD_NU)
    dense = gan.render(pairs.size, PXD_NV, PXD_NU, seeds, z) * gan.scale
    k, iv, iu = np.nonzero(dense > ADC_THRESHOLD)
    assert 0 < k.size
    np.testing.assert_array_equal(out["event"], k // pxd.size)
    np.testing.assert_array_equal(out["sensor"], geom.sensor_id[pxd[k % pxd.size]])
    np.testing.assert_array_equal(out["pixel"], iv * PXD_NU + iu)
    np.testing.assert_allclose(out["adc"], dense[k, iv, iu], rtol=1e-6)
    hits = _hits(geom)
    hits["event"] = hits["event"] - 1  # 0-based
    some = gan(np.random.default_rng(5), 5, geom, hits=hits)
    on = set(zip(hits["event"].tolist(), hits["sensor"].tolist()))
    assert some["event"].size > 0 and set(zip(some["event"].tolist(), some["sensor"].tolist())) <= on


def test_numpy_seed_sampling_draws_the_module_seeds_and_matching_hits_the_target():
    """The numpy seeds (binomial counts per seed row) and the module's dense noise map both fire
    P(z > t_region) of the seed positions in each region (Poisson errors), and match_occupancy finds the
    thresholds that fire a requested fraction of pixels per region."""
    torch = pytest.importorskip("torch")
    from scipy.special import ndtr

    from b2luca.ml.model_payload import load_state, state_to_arrays
    from b2luca.ml.pxd_gan import KERNEL, GanBackground, build_generator, fired_per_patch, match_occupancy, \
        region_occupancy, untrained_arrays
    from calibrations.pxd_background_gan import settings

    arrays = untrained_arrays({**settings.expert_config, **TINY})
    n_cond = arrays["gen_threshold"].size
    t = np.linspace(2.2, 2.8, n_cond)  # a different seed rate per region
    gan = GanBackground({**arrays, "gen_threshold": t.astype(np.float32)})
    module = load_state(build_generator(gan.latent, gan.hidden, gan.pv, gan.pu),
                        {**arrays, "gen_threshold": t.astype(np.float32)}, "gen", "PXDBackgroundGAN")
    region = np.repeat(np.arange(n_cond), 1000)
    dense: list[np.ndarray] = []
    render = module.render

    def counting_render(n, seeds, z):
        dense.append(np.bincount(region[seeds[0].numpy()], minlength=n_cond))
        return render(n, seeds, z)

    module.render = counting_render
    with torch.no_grad():
        module(torch.from_numpy(region), torch.Generator().manual_seed(1))
    rows, cols = gan.pv + KERNEL - 1, gan.pu + KERNEL - 1
    seeds, _ = gan._draw(np.random.default_rng(1), np.repeat(region[:, None], rows, axis=1), gan.pu)
    sparse = np.bincount(region[seeds[0]], minlength=n_cond)
    expected = 1000 * rows * cols * ndtr(-t.astype(np.float32))
    assert expected.min() > 500
    for counts in (dense[0], sparse):  # binomial counts: at most Poisson errors
        assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected)), (counts, expected)
    target = np.linspace(0.004, 0.016, gan.n_cond)
    module.threshold.copy_(torch.from_numpy(match_occupancy(dict(arrays), target, 1500, 3)))
    matched = {**arrays, **state_to_arrays(module.state_dict(), "gen")}
    region = np.repeat(np.arange(gan.n_cond), 1500)  # other random numbers than the matching's: ~5 % each
    got = region_occupancy(fired_per_patch(GanBackground(matched).images(np.random.default_rng(9), region), 1.0),
                           region, gan.n_cond, gan.pv * gan.pu)
    np.testing.assert_allclose(got, target, rtol=0.25)
    assert np.corrcoef(got, target)[0, 1] > 0.95


def test_whole_sensors_fire_the_matched_occupancy_per_layer_and_v_band():
    """Inference on whole sensors maps each seed row to its region (layer x v band of patch_v rows): with
    distinct thresholds matched to a rising target, the fired-pixel fraction per layer x band of
    GanBackground(rng, events) (counted from its pixels) follows the target."""
    pytest.importorskip("torch")
    from b2luca.ml.pxd_gan import GanBackground, match_occupancy, untrained_arrays
    from b2luca.reco.geometry import PXD_NU, PXD_NV
    from calibrations.pxd_background_gan import settings

    arrays = untrained_arrays({**settings.expert_config, **TINY})
    pv = int(TINY["patch_v"])
    n_bands = PXD_NV // pv
    target = np.linspace(0.004, 0.016, 2 * n_bands)  # layer 1 bands 0.., then layer 2 bands 0..
    gan = GanBackground({**arrays, "gen_threshold": match_occupancy(dict(arrays), target, 2000, 3)})
    geom = nominal_geometry()
    n_events = 40
    out = gan(np.random.default_rng(13), n_events, geom)
    layer = geom.layer[geom.sensor_index(out["sensor"])] - 1
    band = out["pixel"] // PXD_NU // pv
    fired = np.bincount(layer * n_bands + band, minlength=2 * n_bands)
    sensors = np.bincount(geom.layer[geom.is_pxd] - 1, minlength=2)
    got = fired / (np.repeat(sensors, n_bands) * n_events * pv * PXD_NU)
    np.testing.assert_allclose(got, target, rtol=0.15)  # deviations seen: within 8 % (~2 sigma)
    assert np.corrcoef(got, target)[0, 1] > 0.97


def test_cluster_crops_are_centred_on_the_charge_centroid():
    from b2luca.ml.pxd_gan import KERNEL, cluster_crops
    from b2luca.reco.geometry import PXD_NU

    geom = nominal_geometry()
    s = int(geom.sensor_id[np.flatnonzero(geom.is_pxd)[0]])
    # event 0: a 3-pixel row at v 20, u 10..12 (centroid u 11); event 1: one pixel at the sensor corner
    pixels = {"event": np.array([0, 0, 0, 1]), "sensor": np.full(4, s),
              "pixel": np.array([20 * PXD_NU + 10, 20 * PXD_NU + 11, 20 * PXD_NU + 12, 0]),
              "adc": np.array([30.0, 60.0, 30.0, 15.0])}
    crops = cluster_crops(pixels, 30.0)
    h = KERNEL // 2
    assert crops.shape == (2, KERNEL, KERNEL)
    np.testing.assert_array_equal(crops[0, h, h - 1:h + 2], [1.0, 2.0, 1.0])
    assert crops[0].sum() == 4.0 and crops[1, h, h] == 0.5 and crops[1].sum() == 0.5


def test_generator_payload_problems_are_one_error():
    """The numpy inference checks the payload's arrays (every bad one named in one PayloadError); a payload of
    the old fully connected generator (format 1) is refused with the reason."""
    pytest.importorskip("torch")
    from b2luca.errors import PayloadError
    from b2luca.ml.pxd_gan import GanBackground, untrained_arrays
    from calibrations.pxd_background_gan import settings

    arrays = untrained_arrays({**settings.expert_config, **TINY})
    bad = {k: v for k, v in arrays.items() if k != "gen_shape_2_bias"}
    bad["gen_stamp_weight"] = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(PayloadError) as err:
        GanBackground(bad)
    assert "gen_shape_2_bias missing" in str(err.value) and "gen_stamp_weight has shape" in str(err.value)
    with pytest.raises(PayloadError, match="format_version 1, expected 2"):
        GanBackground({**arrays, "hp_format_version": np.array([1.0])})


def test_region_occupancy_counts_the_fired_pixels_per_region(background):
    """The occupancy target per region: fired pixels of the patches of a region over their pixels, counted in
    blocks (no temporaries of the whole patch array), the same as from the background pixels directly."""
    from b2luca.ml.pxd_gan import ADC_THRESHOLD, fired_per_patch, region_occupancy, regions, sensor_patches

    geom = nominal_geometry()
    pixels, n = background
    images, region = sensor_patches(pixels, n, geom, 15, 10, 30.0)
    counts = fired_per_patch(images, 30.0, rows=7)
    np.testing.assert_array_equal(counts, fired_per_patch(images, 30.0))
    assert counts.sum() == np.count_nonzero(np.asarray(pixels["adc"]) > ADC_THRESHOLD) > 0
    occ = region_occupancy(counts, region, regions(15, 10)[2], 150)
    assert occ.shape == (20,)
    assert float(np.average(occ, weights=np.bincount(region))) == pytest.approx(counts.sum() / images.size)
    assert occ[:10].mean() > 1.3 * occ[10:].mean()  # layer 1 has 1.6x the background of layer 2


def test_training_learns_the_cluster_size_from_the_critic(background):
    """The generator starts from faint clusters (mostly one pixel: the mean cluster size ~70 % too small);
    the adversarial game (generator steps against the critic's score) brings its single-seed clusters to
    within 30 % of the real clusters' mean size in 100 iterations (seed 16; seeds 16..19 of this setting on
    other events gave -31 % .. +1 %).  Without the generator step the size stays ~70 % too small."""
    torch = pytest.importorskip("torch")
    from b2luca.ml.model_payload import load_state
    from b2luca.ml.pxd_gan import ADC_THRESHOLD, build_generator, cluster_crops, train
    from calibrations.pxd_background_gan import settings

    pixels, n_events = background
    geom = nominal_geometry()
    real = cluster_crops(pixels, 30.0)
    size_real = np.count_nonzero(real, axis=(1, 2)).mean()

    def size_deviation(iterations: int) -> float:
        cfg = {**settings.expert_config, **TINY, "latent": 8, "hidden": 64, "batch_size": 256, "critic_updates": 2,
               "generator_iterations": iterations, "eval_every": 0, "eval_per_region": 50, "seed": 16}
        arrays, _ = train(pixels, n_events, geom, cfg)
        gen = load_state(build_generator(8, 64, 15, 10), arrays, "gen", "PXDBackgroundGAN")
        with torch.no_grad():
            crops = gen.crops(4000, torch.Generator().manual_seed(2)).numpy() * float(cfg["adc_scale"])
        return float(np.count_nonzero(crops > ADC_THRESHOLD, axis=(1, 2)).mean() / size_real - 1)

    start = size_deviation(0)  # the critic's warm-up only: no generator step
    assert start < -0.5
    learnt = size_deviation(100)
    assert abs(learnt) < 0.3, (start, learnt)


def test_default_regions_follow_the_v_profile_within_the_hit_map_allowance(background):
    """The script's default regions (layer x v band of ``patch_v`` rows; one seed threshold each) reproduce
    the toy background's v profile in the validation's hit-map bins within half the hit-map allowance; one
    region per layer (patch_v 150, the earlier default) misses the allowance."""
    from b2luca.ml.pxd_gan import pixel_occupancy
    from b2luca.reco.geometry import PXD_NU
    from calibrations.pxd_background_gan import settings
    from calibrations.validations.pxd_background_gan import V_BAND
    from calibrations.validations.pxd_background_gan import settings as validation

    pixels, n_events = background
    geom = nominal_geometry()
    hitmap = pixel_occupancy(pixels, n_events, geom, V_BAND, PXD_NU, 30.0).reshape(2, -1)

    def worst(patch_v: int) -> float:  # flat occupancy in each region, averaged over each hit-map bin
        flat = pixel_occupancy(pixels, n_events, geom, patch_v, PXD_NU, 30.0).reshape(2, -1)
        model = np.repeat(flat, patch_v, axis=1).reshape(2, -1, V_BAND).mean(axis=2)
        return float(np.abs(model / hitmap - 1).max())

    allowance = float(validation.expert_config["hitmap_tolerance"])
    assert worst(int(settings.expert_config["patch_v"])) < allowance / 2
    assert worst(150) > allowance
