"""Validation of the beam spot.

With the simulation truth: chi2 of the position (fitted - true) with its 3x3 covariance, and of the
three size variances (unclipped estimate - true) / error, each below the chi2(3 dof) quantile for
probability ``p_false``; the largest single pull below the Gaussian limit for 3 values.
The tracks are measured in the alignment's global frame (the overall VXD position and orientation
fixed to the nominal geometry, :mod:`b2luca.alignment.constraints`), so the true position is first
expressed in that frame (:func:`true_position_in_frame`: :func:`b2luca.alignment.frame.truth_in_frame`
with the true VXDAlignment, moved with the used alignment's own overall motion); no other correction.
A residual misalignment of the alignment the cDSTs were made with (read from the cDST manifests) still
moves the reconstructed beam spot: the position covariance used against the
truth adds, per axis, the mean square displacement (truth in the frame - used) of the PXD sensor
centres as a systematic (zero when the cDSTs were made with the true alignment), and the size
variances add the variance of those displacements about their mean (the extra spread of the impact
parameters a residual misalignment causes).
Always (self-consistency with the input cDSTs): the stored result must agree with a re-fit of the
data (same chi2 criterion), and the fits of the even and odd events must agree within their errors;
the x size must be significant and positive.  Writes beam_spot.png and beam_spot.csv.
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="BeamSpot",
                              description=__doc__,
                              download_files=[],
                              expert_config={"p_false": 1e-3})


def _chi2(delta: np.ndarray, cov: np.ndarray) -> float:
    return float(delta @ np.linalg.solve(cov, delta))


def alignment_systematic(files, true_vxd, used=None) -> np.ndarray:
    """Diagonal covariance (3, 3) [mm^2]: per axis the mean square displacement (true - used) of the PXD
    sensor centres, the used alignment being the VXDAlignment recorded in the cDST manifests (averaged over
    the productions: runs); ``used``: :func:`used_alignments` of ``files`` when already read."""
    d, w = _pxd_displacements(files, true_vxd, used)
    return np.diag(np.average(np.mean(d ** 2, axis=1), axis=0, weights=w))


def alignment_size_systematic(files, true_vxd, used=None) -> np.ndarray:
    """Per axis (3,) [mm^2]: the variance of the PXD sensor displacements (true - used) about their mean:
    a residual misalignment spreads the track impact parameters by about that much, which the size
    variances absorb."""
    d, w = _pxd_displacements(files, true_vxd, used)
    return np.average(np.var(d, axis=1), axis=0, weights=w)


def _pxd_displacements(files, true_vxd, used=None) -> tuple[np.ndarray, np.ndarray]:
    """(n_alignments, n_pxd_sensors, 3) displacements (truth - used) of the PXD sensor centres [mm] per distinct
    used alignment, and (n_alignments,) its number of productions (weights); both alignments with their
    overall rigid motion removed (:func:`b2luca.alignment.frame.truth_in_frame`): only the residual
    misalignment, not the choice of frame, moves the beam spot against the truth in the frame."""
    from b2luca.alignment.frame import truth_in_frame
    from b2luca.reco.geometry import aligned_frames, nominal_geometry

    geom = nominal_geometry()
    none = (np.zeros((1, int(geom.is_pxd.sum()), 3)), np.ones(1))
    if true_vxd is None:
        return none
    used = used_alignments(files) if used is None else used
    if not used:
        return none
    true = _params(geom, true_vxd)
    c_true, _ = aligned_frames(geom, truth_in_frame(true, np.zeros((0, 3)), geom=geom).vxd)
    out = [(c_true - aligned_frames(geom, truth_in_frame(params, np.zeros((0, 3)), geom=geom).vxd)[0])[geom.is_pxd]
           for params, _ in used]
    return np.stack(out), np.array([n for _, n in used], float)


def true_position_in_frame(files, true_vxd, true_position, used=None) -> np.ndarray:
    """(3,) the true beam-spot position in the frame of the alignment the cDSTs were made with [mm].

    The alignment fixes the frame by its overall VXD rigid motion (zero for the alignment calibration's
    output, :mod:`b2luca.alignment.constraints`); the truth is expressed in the true VXD's frame by
    :func:`b2luca.alignment.frame.truth_in_frame` and moved with the used alignment's own overall motion
    (zero unless the cDSTs were made with e.g. the true alignment); averaged over the productions."""
    from b2luca.alignment.frame import truth_in_frame
    from b2luca.reco.geometry import nominal_geometry

    pos = np.asarray(true_position, float)
    if true_vxd is None:
        return pos
    geom = nominal_geometry()
    b = truth_in_frame(_params(geom, true_vxd), np.zeros((0, 3)), pos, geom=geom).beam_position
    assert b is not None
    used = used_alignments(files) if used is None else used
    moved, weights = [], []
    for params, n in used:
        f = truth_in_frame(params, np.zeros((0, 3)), geom=geom)
        moved.append(b + f.translation + np.cross(f.rotation, b))
        weights.append(n)
    return np.average(moved, axis=0, weights=weights) if moved else b


def _params(geom, payload) -> np.ndarray:
    params = np.zeros((geom.n_sensors, 6))
    params[geom.sensor_index(payload["sensor_id"])] = payload["params"]
    return params


def used_alignments(files) -> list[tuple[np.ndarray, int]]:
    """The distinct VXDAlignment params (S, 6) the cDSTs of ``files`` were made with (from their manifests), each
    with its number of productions (runs): a payload is read once however many runs used it."""
    import json
    from pathlib import Path

    from b2luca.conditions import LocalDatabase
    from b2luca.reco.geometry import nominal_geometry

    geom = nominal_geometry()
    counts: dict[tuple[str, int] | None, int] = {}
    named_by: dict[tuple[str, int] | None, Path] = {}
    for manifest in sorted({Path(f).resolve().parent.parent / "manifest.json" for f in files}):
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: the cDST manifest is missing (needed for the alignment used)")
        fp = json.loads(manifest.read_text())["groups"]["tracks"]["VXDAlignment"]
        key = None if fp is None else (str(fp["database"]), int(fp["revision"]))
        counts[key] = counts.get(key, 0) + 1
        named_by.setdefault(key, manifest)
    used = []
    for key, n in counts.items():
        if key is None:
            used.append((np.zeros((geom.n_sensors, 6)), n))
            continue
        db = LocalDatabase(key[0])
        entry = next((e for e in db.entries() if e.name == "VXDAlignment" and e.revision == key[1]), None)
        if entry is None:
            raise KeyError(f"{db.database_txt}: VXDAlignment revision {key[1]} named by {named_by[key]} is missing")
        used.append((_params(geom, db.read(entry)), n))
    return used


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate BeamSpot (see the module docstring); returns a Verdict."""
    from scipy.stats import chi2 as chi2_dist

    from b2luca.contract import Verdict, read_input_data
    from calibrations._common import calibration_output, max_abs_pull_limit, pyplot, save_figure, truth_or_none, \
        write_csv
    from calibrations._common import expert_config_dict
    from calibrations.beam_spot import fit_beamspot, read_tracks, select_pairs
    from calibrations.beam_spot import settings as cal_settings

    cfg = {**cal_settings.expert_config, **settings.expert_config, **expert_config_dict(expert_config)}
    p_false = float(cfg["p_false"])
    limit3 = float(chi2_dist.isf(p_false, 3))
    limit_pull = max_abs_pull_limit(3, p_false)
    out = calibration_output(job_path, "BeamSpot", "BeamSpot")
    pos, pcov = np.asarray(out["position"], float), np.asarray(out["position_error"], float)
    size_u, size_e = np.asarray(out["size_unconstrained"], float), np.asarray(out["size_error"], float)
    figures: dict[str, float | str] = {"n_events": float(np.asarray(out["n_events"])[0])}
    for i, ax in enumerate("xyz"):
        figures[f"{ax}_mm"] = float(pos[i])
        figures[f"{ax}_error_mm"] = float(np.sqrt(pcov[i, i]))
        figures[f"size_{ax}_mm"] = float(np.sqrt(max(size_u[i, i], 0.0)))
    reasons = []
    rows: dict[str, list] = {"quantity": [], "stored": [], "reference": [], "error": [], "pull": []}

    def compare(label: str, ref_pos: np.ndarray, ref_cov: np.ndarray, ref_size: np.ndarray, size_err: np.ndarray):
        dp = pos - ref_pos
        c2 = _chi2(dp, pcov + ref_cov)
        pulls = dp / np.sqrt(np.diag(pcov + ref_cov))
        ds = np.diag(size_u) - np.diag(ref_size)
        spulls = ds / size_err
        figures[f"{label}_position_chi2"] = c2
        figures[f"{label}_size_chi2"] = float(np.sum(spulls ** 2))
        if c2 > limit3 or np.max(np.abs(pulls)) > limit_pull:
            reasons.append(f"{label}: position differs, chi2 {c2:.1f} (limit {limit3:.1f}), pulls {np.round(pulls, 1)}")
        if np.sum(spulls ** 2) > limit3 or np.max(np.abs(spulls)) > limit_pull:
            reasons.append(f"{label}: size differs, pulls {np.round(spulls, 1)}")
        for i, ax in enumerate("xyz"):
            rows["quantity"] += [f"{label}:{ax}", f"{label}:size_{ax}{ax}"]
            rows["stored"] += [pos[i], size_u[i, i]]
            rows["reference"] += [ref_pos[i], ref_size[i, i]]
            rows["error"] += [np.sqrt((pcov + ref_cov)[i, i]), size_err[i]]
            rows["pull"] += [pulls[i], spulls[i]]

    truth = truth_or_none(kwargs.get("reference_db"), "BeamSpot", requested_iov)
    files = [p for p, _ in read_input_data(input_data_path).get("mumu_tight_or_highm_calib", [])]
    if truth is not None:
        true_vxd = truth_or_none(kwargs.get("reference_db"), "VXDAlignment", requested_iov)
        used = used_alignments(files) if true_vxd is not None else []
        syst = alignment_systematic(files, true_vxd, used)
        size_syst = alignment_size_systematic(files, true_vxd, used)
        for i, ax in enumerate("xyz"):
            figures[f"alignment_systematic_{ax}_mm"] = float(np.sqrt(syst[i, i]))
            figures[f"alignment_size_systematic_{ax}{ax}_mm2"] = float(size_syst[i])
        true_pos = true_position_in_frame(files, true_vxd, truth["position"], used)
        for i, ax in enumerate("xyz"):
            figures[f"truth_in_frame_{ax}_mm"] = float(true_pos[i])
        compare("truth", true_pos, syst, np.asarray(truth["size"], float),
                np.sqrt(np.diag(size_e) ** 2 + size_syst ** 2))
    # self-consistency with the data
    tracks = read_tracks(files)
    refit = fit_beamspot(tracks, cfg)
    # identical data: the difference must be ~0 (numerical); use the stored errors
    compare("refit", np.asarray(refit["position"]), np.zeros((3, 3)), np.asarray(refit["size_unconstrained"]),
            np.diag(size_e))
    i1, _ = select_pairs(tracks, cfg)
    halves = []
    for parity in (0, 1):
        m = (np.asarray(tracks["event"]) % 2) == parity
        halves.append(fit_beamspot({k: v[m] for k, v in tracks.items()}, cfg))
    dp = halves[0]["position"] - halves[1]["position"]
    c2 = _chi2(dp, halves[0]["position_error"] + halves[1]["position_error"])
    figures["split_half_position_chi2"] = c2
    if c2 > limit3:
        reasons.append(f"even/odd halves disagree on the position: chi2 {c2:.1f} (limit {limit3:.1f})")
    if size_u[0, 0] < 3 * size_e[0, 0]:
        reasons.append("the horizontal size is not significant")
    figures["mode"] = "truth" if truth is not None else "self-consistency"

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    d0, phi = np.asarray(tracks["d0"]), np.asarray(tracks["phi0"])
    axes[0].plot(phi, 1e3 * d0, ",", alpha=0.5)
    grid = np.linspace(-np.pi, np.pi, 200)
    axes[0].plot(grid, 1e3 * (pos[0] * np.sin(grid) - pos[1] * np.cos(grid)), "r-", label="fit")
    axes[0].set_xlabel("phi0 [rad]")
    axes[0].set_ylabel("d0 [um]")
    axes[0].set_ylim(1e3 * np.percentile(d0, 0.5) - 20, 1e3 * np.percentile(d0, 99.5) + 20)
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"BeamSpot: {i1.size} di-muon events")
    z0 = np.asarray(tracks["z0"])
    axes[1].hist(z0, bins=60, histtype="step")
    axes[1].axvline(pos[2], color="r")
    axes[1].set_xlabel("z0 [mm]")
    plots = [save_figure(fig, "beam_spot.png"), write_csv("beam_spot.csv", rows)]
    return Verdict(passed=not reasons, figures=figures, plots=plots, message="OK" if not reasons else "; ".join(reasons))
