"""Validation of the VXD and CDC alignment.

With the simulation truth (DESIGN §5): the residual misalignment fitted - true.  First the weak modes
tracks cannot fix -- a global rigid-body motion (3 translations, 3 small rotations) of the sensor
centres -- are fitted to the centre displacements and reported ("weak-mode amplitudes"); the
remaining sensor displacements, expressed in the sensor frame (du, dv, dw), are divided by the
solver's errors.  Passes when, per coordinate, the pull mean is within 0 ± k/sqrt(N) and the pull
width below ``max_pull_width`` (the errors ignore the multiple scattering the track fit does not model
and the presigma regularisation, hence a width bound instead of 1 ± k/sqrt(2N)), and the RMS residual
misalignment of the shifts is smaller than before the alignment.  The CDC layer shifts are compared
the same way after removing the same global motion.
Always (self-consistency): a sample of di-muon tracks refitted with the new alignment must have a
smaller median chi2/ndf than with the constants in force before.
Writes vxdcdc_alignment.png and vxdcdc_alignment.csv.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="VXDCDCAlignment",
                              description=__doc__,
                              download_files=[],
                              expert_config={"pull_tolerance_sigma": 5.0, "max_pull_width": 2.5,
                                             "validation_tracks": 1000})


def rigid_body_fit(center: np.ndarray, displacement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares global motion d = t + w x c of points c; returns (t, w) and the residual (N, 3)."""
    n = center.shape[0]
    a = np.zeros((n, 3, 6))
    a[:, :, :3] = np.eye(3)
    c = center
    a[:, 0, 4], a[:, 0, 5] = c[:, 2], -c[:, 1]
    a[:, 1, 3], a[:, 1, 5] = -c[:, 2], c[:, 0]
    a[:, 2, 3], a[:, 2, 4] = c[:, 1], -c[:, 0]
    m = a.reshape(-1, 6)
    sol, *_ = np.linalg.lstsq(m, displacement.reshape(-1), rcond=None)
    return sol, (displacement.reshape(-1) - m @ sol).reshape(n, 3)


def _median_chi2(raw, constants) -> float:
    from b2luca.reco.measurements import build_measurements
    from b2luca.reco.robust import fit_robust

    fit = fit_robust(build_measurements(raw, constants), constants)
    return float(np.median(fit.chi2 / np.maximum(fit.ndf, 1)))


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate VXDAlignment + CDCAlignment (see the module docstring); returns a Verdict."""
    import copy
    import json
    from pathlib import Path

    from b2luca.contract import Verdict, chain_from_caf_config, read_input_data
    from calibrations._common import expert_config_dict
    from b2luca.reco.geometry import aligned_frames, nominal_geometry
    from b2luca.reco.measurements import load_constants
    from b2luca.reco.raw import read_raw
    from calibrations._common import (calibration_output, first_exprun, pull_figures, pyplot, save_figure,
                                      truth_or_none, write_csv)
    from calibrations.validations._alignment_trend import trend_section

    cfg = {**settings.expert_config, **expert_config_dict(expert_config)}
    k = float(cfg["pull_tolerance_sigma"])
    geom = nominal_geometry()
    vxd = calibration_output(job_path, "VXDCDCAlignment", "VXDAlignment")
    cdc = calibration_output(job_path, "VXDCDCAlignment", "CDCAlignment")
    fitted = np.zeros((geom.n_sensors, 6))
    fitted[geom.sensor_index(vxd["sensor_id"])] = vxd["params"]
    err = np.full((geom.n_sensors, 6), np.nan)
    err[geom.sensor_index(vxd["sensor_id"])] = vxd["params_error"]
    figures: dict[str, float | str] = {}
    reasons: list[str] = []
    rows: dict[str, list] = {"quantity": [], "value": []}
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))

    truth_vxd = truth_or_none(kwargs.get("reference_db"), "VXDAlignment", requested_iov)
    truth_cdc = truth_or_none(kwargs.get("reference_db"), "CDCAlignment", requested_iov)
    if truth_vxd is not None and truth_cdc is not None:
        figures["mode"] = "truth"
        true = np.zeros((geom.n_sensors, 6))
        true[geom.sensor_index(truth_vxd["sensor_id"])] = truth_vxd["params"]
        c_true, _ = aligned_frames(geom, true)
        c_fit, _ = aligned_frames(geom, fitted)
        weak, resid = rigid_body_fit(geom.center, c_fit - c_true)
        for name, value in zip(("tx_um", "ty_um", "tz_um", "wx_urad", "wy_urad", "wz_urad"),
                               weak * np.array([1e3, 1e3, 1e3, 1e6, 1e6, 1e6])):
            figures[f"weak_{name}"] = float(value)
        local = np.einsum("sji,sj->si", geom.rot, resid)  # residual misalignment in the sensor frames
        _w0, before = rigid_body_fit(geom.center, geom.center - c_true)
        local_before = np.einsum("sji,sj->si", geom.rot, before)
        for i, axis in enumerate("uvw"):
            pulls = local[:, i] / err[:, i]
            pf = pull_figures(pulls, k)
            rms_after = float(np.sqrt(np.mean(local[:, i] ** 2)))
            rms_before = float(np.sqrt(np.mean(local_before[:, i] ** 2)))
            figures.update({f"vxd_d{axis}_pull_mean": pf["pull_mean"], f"vxd_d{axis}_pull_width": pf["pull_width"],
                            f"vxd_d{axis}_rms_after_um": 1e3 * rms_after, f"vxd_d{axis}_rms_before_um": 1e3 * rms_before})
            if abs(pf["pull_mean"]) > pf["pull_mean_tolerance"]:
                reasons.append(f"VXD d{axis}: pull mean {pf['pull_mean']:.2f} outside ±{pf['pull_mean_tolerance']:.2f}")
            if pf["pull_width"] > float(cfg["max_pull_width"]):
                reasons.append(f"VXD d{axis}: pull width {pf['pull_width']:.2f} above {cfg['max_pull_width']}")
            if rms_after >= rms_before:
                reasons.append(f"VXD d{axis}: residual misalignment {1e3 * rms_after:.1f} um not below "
                               f"{1e3 * rms_before:.1f} um before")
            axes[0].hist(np.clip(pulls, -6, 6), bins=48, histtype="step", label=f"d{axis}")
        axes[0].set_xlabel("(fitted - true) / error, weak modes removed")
        axes[0].legend(fontsize=7)
        axes[0].set_title("VXD sensor shifts")
        # CDC: remove the same global motion in the transverse plane
        lay = np.arange(cdc["params"].shape[0])
        dc = np.asarray(cdc["params"], float) - np.asarray(truth_cdc["params"], float)
        dc_xy = dc[:, :2] - weak[:2]
        dc_phi = dc[:, 2] - weak[5]
        cerr = np.asarray(cdc["params_error"], float)
        for i, (name, d, before_v) in enumerate((("dx", dc_xy[:, 0], truth_cdc["params"][:, 0] + weak[0]),
                                                 ("dy", dc_xy[:, 1], truth_cdc["params"][:, 1] + weak[1]))):
            pf = pull_figures(d / cerr[:, i], k)
            rms_after = float(np.sqrt(np.mean(d ** 2)))
            rms_before = float(np.sqrt(np.mean((before_v - np.mean(before_v)) ** 2)))
            figures.update({f"cdc_{name}_pull_mean": pf["pull_mean"], f"cdc_{name}_pull_width": pf["pull_width"],
                            f"cdc_{name}_rms_after_um": 1e3 * rms_after, f"cdc_{name}_rms_before_um": 1e3 * rms_before})
            if rms_after >= rms_before:
                reasons.append(f"CDC {name}: residual misalignment {1e3 * rms_after:.1f} um not below "
                               f"{1e3 * rms_before:.1f} um before")
            axes[1].plot(lay, 1e3 * d, ".", label=f"CDC {name}")
        figures["cdc_dphi_rms_after_urad"] = float(1e6 * np.sqrt(np.mean(dc_phi ** 2)))
        axes[1].set_xlabel("CDC layer")
        axes[1].set_ylabel("fitted - true (weak modes removed) [um]")
        axes[1].legend(fontsize=7)
    else:
        figures["mode"] = "self-consistency"
    # track chi2 before / after on a sample of di-muons
    config = json.loads((Path(job_path) / "caf_config.json").read_text())
    files = [p for p, _ in read_input_data(input_data_path).get("mumu_tight_or_highm_calib", [])][:1]
    if files:
        raw = read_raw(files)
        limit = int(cfg["validation_tracks"]) // 2
        raw = {t: {kk: v[c["gevent"] < limit] for kk, v in c.items()} for t, c in raw.items()}
        before = load_constants(chain_from_caf_config(config).without_bucket_results(("VXDAlignment", "CDCAlignment")),
                                first_exprun(requested_iov))
        after = copy.deepcopy(before)
        after.vxd_params = fitted
        after.cdc_params = np.asarray(cdc["params"], float)
        chi_b, chi_a = _median_chi2(raw, before), _median_chi2(raw, after)
        figures.update(track_chi2_ndf_before=chi_b, track_chi2_ndf_after=chi_a)
        if not chi_a < chi_b and chi_a > 1.2:
            reasons.append(f"track chi2/ndf did not improve: {chi_a:.3f} after, {chi_b:.3f} before")
    trend_figures, trend_plots, trend_reasons = trend_section(job_path)  # per-run trend, iterations (own module)
    figures.update(trend_figures)
    reasons += trend_reasons
    for key, value in figures.items():
        rows["quantity"].append(key)
        rows["value"].append(value)
    plots = [save_figure(fig, "vxdcdc_alignment.png"), write_csv("vxdcdc_alignment.csv", rows)] + trend_plots
    return Verdict(passed=not reasons, figures=figures, plots=plots, message="OK" if not reasons else "; ".join(reasons))
