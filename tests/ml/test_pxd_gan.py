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
    assert not verdict.passed
    assert "occupancy" in verdict.message or "cluster size" in verdict.message
    assert verdict.figures["d0_none_vs_simulated_sigma_pt0-0.2"] > 0  # part (b) ran too

    class Faithful:  # stands in for a perfectly trained generator
        def __init__(self, arrays, threads=None):
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


def _phased_full_images(gan, rng, n_events, geom):
    """Full (event, sensor, v, u) images built the slow way from the random-phase tiling of GanBackground:
    the same random draws (phases, then the patches in (event, sensor, k, u column) order)."""
    from b2luca.ml.pxd_gan import regions
    from b2luca.reco.geometry import PXD_NU, PXD_NV

    nb_v, nb_u, _ = regions(gan.pv, gan.pu)
    pxd = np.flatnonzero(geom.is_pxd)
    offset = rng.integers(0, gan.pv, (n_events, pxd.size))
    full = np.zeros((n_events, pxd.size, (nb_v + 2) * gan.pv, PXD_NU), np.float32)  # pv rows of margin each side
    keys, region = [], []
    for e in range(n_events):
        for s in range(pxd.size):
            for k in range(nb_v + 1):
                first = k * gan.pv - offset[e, s]
                if first >= PXD_NV or first + gan.pv <= 0:
                    continue
                band = min(max((first + (gan.pv - 1) // 2) // gan.pv, 0), nb_v - 1)
                for bu in range(nb_u):
                    keys.append((e, s, first, bu))
                    region.append((geom.layer[pxd[s]] - 1) * nb_v + band)
    images = gan.images(rng, np.array(region))
    for (e, s, first, bu), img in zip(keys, images):
        full[e, s, gan.pv + first:2 * gan.pv + first, bu * gan.pu:(bu + 1) * gan.pu] = img
    return full[:, :, gan.pv:gan.pv + PXD_NV]


def test_generator_inference_is_the_module_and_fired_pixels_are_those_of_the_full_images(background):
    """The fast inference path (convolution as one matrix, only the generated patches looked at) gives the
    generator module's images and the fired pixels of full event x sensor images tiled with each sensor's
    random phase, in the same order."""
    torch = pytest.importorskip("torch")
    from b2luca.ml.pxd_gan import ADC_THRESHOLD, GanBackground, untrained_arrays
    from b2luca.reco.geometry import PXD_NU
    from calibrations.pxd_background_gan import settings

    geom = nominal_geometry()
    cfg = {**settings.expert_config, **TINY}
    gan = GanBackground(untrained_arrays(cfg), threads=1)
    assert gan._weights is not None  # the numpy path
    with torch.no_grad():
        z, cond = torch.randn(64, gan.latent), torch.arange(64) % gan.model.n_cond
        module = gan.model(z, cond).numpy()
    assert module.max() > 0
    np.testing.assert_allclose(gan._forward_numpy(z.numpy(), cond.numpy()), module, atol=1e-5)
    gan.scale *= 20  # an untrained generator's outputs are small: make some pixels fire
    n_events = 3
    out = gan(np.random.default_rng(5), n_events, geom)
    full = _phased_full_images(gan, np.random.default_rng(5), n_events, geom)
    pxd = np.flatnonzero(geom.is_pxd)
    ev, s, iv, iu = np.nonzero(full > ADC_THRESHOLD)
    assert 0 < ev.size < full.size
    np.testing.assert_array_equal(out["event"], ev)
    np.testing.assert_array_equal(out["sensor"], geom.sensor_id[pxd[s]])
    np.testing.assert_array_equal(out["pixel"], iv * PXD_NU + iu)
    np.testing.assert_array_equal(out["adc"], full[ev, s, iv, iu])


def test_random_phase_tiling_spreads_a_fixed_patch_pattern_over_the_rows(background):
    """A generator whose clusters sit at one row of its patch (the dense generator's defect, exaggerated)
    gives a hit map flat along v within its statistical error, not a comb with the patch period: the
    cause of the 200-run zig-zag (issue 15).  Without the random phase the same generator fails this."""
    pytest.importorskip("torch")
    from b2luca.ml.pxd_gan import GanBackground, untrained_arrays
    from b2luca.reco.geometry import PXD_NU, PXD_NV
    from calibrations.pxd_background_gan import settings

    geom = nominal_geometry()
    gan = GanBackground(untrained_arrays({**settings.expert_config, **TINY}), threads=1)

    def one_row(rng, region):  # fires pixel (row 2, column 3) of every patch
        rng.standard_normal((region.size, gan.latent))
        img = np.zeros((region.size, gan.pv, gan.pu), np.float32)
        img[:, 2, 3] = 20.0
        return img

    gan.images = one_row  # type: ignore[method-assign]
    out = gan(np.random.default_rng(3), 40, geom)
    rows = np.bincount(out["pixel"] // PXD_NU, minlength=PXD_NV)
    per_band = rows.reshape(-1, 10).sum(axis=1)  # the validation's 10-row bins
    expected = per_band.mean()
    assert np.all(np.abs(per_band - expected) < 5 * np.sqrt(expected) + 0.05 * expected), per_band
    assert np.count_nonzero(rows) > 0.9 * PXD_NV  # every row gets hits, not one row in 15


def test_generator_payload_problems_are_one_error_and_the_whole_sensor_runs_through_torch():
    """The numpy inference checks the payload's arrays (every bad one named in one PayloadError); a
    whole-sensor patch (no dense convolution matrix) is evaluated by the torch module."""
    pytest.importorskip("torch")
    from b2luca.errors import PayloadError
    from b2luca.ml.pxd_gan import GanBackground, untrained_arrays
    from calibrations.pxd_background_gan import settings

    arrays = untrained_arrays({**settings.expert_config, **TINY})
    bad = {k: v for k, v in arrays.items() if k != "gen_net_2_bias"}
    bad["gen_conv_weight"] = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(PayloadError, match="gen_net_2_bias missing.*|gen_conv_weight has shape") as err:
        GanBackground(bad)
    assert "gen_net_2_bias missing" in str(err.value) and "gen_conv_weight has shape" in str(err.value)
    whole = GanBackground(untrained_arrays({**settings.expert_config, **TINY, "patch_v": 150, "patch_u": 50,
                                            "hidden": 8}), threads=1)
    assert whole._weights is None
    images = whole.images(np.random.default_rng(1), np.array([0, 1, 1]))
    assert images.shape == (3, 150, 50) and np.all(images >= 0)


def test_fired_fraction_counts_in_blocks_the_fraction_of_the_whole_array(background):
    """input_occupancy without temporaries of the whole patch array: the same value as the one-line mean, and
    the number of background pixels above the ADC threshold over all the patches' pixels (issue 15)."""
    from b2luca.ml.pxd_gan import ADC_THRESHOLD, fired_fraction, sensor_patches

    geom = nominal_geometry()
    pixels, n = background
    images, _ = sensor_patches(pixels, n, geom, 15, 10, 30.0)
    expected = float(np.mean(images * 30.0 > ADC_THRESHOLD))
    assert fired_fraction(images, 30.0) == expected
    assert fired_fraction(images, 30.0, rows=7) == expected  # blocks that do not divide the patches
    above = np.count_nonzero(np.asarray(pixels["adc"]) > ADC_THRESHOLD)
    assert expected == pytest.approx(above / images.size, rel=1e-12) and above > 0
