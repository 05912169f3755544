"""Beam spot position and size.

Fits the interaction-region position and size from the track perigees of di-muon events reconstructed
with the raw-stage constants (cDST), and stores them in the BeamSpot payload.

Method (pairs, independent of the track-error model): in a di-muon event the two tracks come from
one vertex and are back to back in the transverse plane (phi2 = phi1 + pi), so with
d0 = x sin(phi) - y cos(phi) + e for each track,
a = (d0_1 - d0_2)/2 = x sin(phi1) - y cos(phi1) + (e1 - e2)/2 and b = (d0_1 + d0_2)/2 = (e1 + e2)/2:
b measures the event's own resolution.  (x, y) is the least-squares fit of a on (sin, -cos)
(sandwich covariance); the transverse size follows from the regression of r^2 - b^2 (r = residual of
a) on (sin^2, cos^2, -2 sin cos) -> (sxx, syy, sxy).  Longitudinally z_v = mean over the two tracks
of z0 + (x cos(phi) + y sin(phi)) tanl; z = mean(z_v), szz = var(z_v) - mean(((z_1 - z_2)/2)^2).
Events are kept when they have exactly two tracks of opposite charge with chi2/ndf below
``max_chi2_ndf``, at least ``min_vxd_hits`` VXD clusters each and |phi1 - phi2 - pi| < ``max_acol``;
entries further than ``outlier_sigma`` from the fit are rejected (iterated).  Unmeasurable (negative)
size variances are clipped to 0 in ``size``; the unclipped estimate and element errors are kept in
the extra keys ``size_unconstrained`` and ``size_error`` (3, 3); ``n_events`` (1,).
"""

from __future__ import annotations

import numpy as np

from b2luca.catalogue import CalibrationSettings, INPUT_DATA_FILTERS

#: Tells the automated system some details of this script
settings = CalibrationSettings(name="BeamSpot",
                               expert_username="beamspot_expert",
                               subsystem="tracking",
                               description=__doc__,
                               input_data_formats=["cdst"],
                               input_data_names=["mumu_tight_or_highm_calib"],
                               input_data_filters={"mumu_tight_or_highm_calib":
                                                   [INPUT_DATA_FILTERS["Data Tag"]["mumu_tight_or_highm_calib"],
                                                    INPUT_DATA_FILTERS["Run Type"]["physics"],
                                                    INPUT_DATA_FILTERS["Data Quality Tag"]["Good"],
                                                    INPUT_DATA_FILTERS["Magnet"]["On"]]},
                               depends_on=[],
                               expert_config={"min_events": 1000,
                                              "outlier_sigma": 5.0,
                                              "max_chi2_ndf": 5.0,
                                              "min_vxd_hits": 3,
                                              "max_acol": 0.05},
                               produced_payloads=["BeamSpot"])

PAYLOAD = "BeamSpot"


def select_pairs(tracks: dict[str, np.ndarray], cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (i1, i2) of the two tracks of every selected di-muon event (vectorised).

    Events are identified by (file index, event) when the tracks dict has a ``file`` column."""
    ev = np.asarray(tracks["event"], np.int64)
    key = ev + (np.asarray(tracks["file"], np.int64) << 40 if "file" in tracks else 0)
    order = np.argsort(key, kind="stable")
    k = key[order]
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    size = np.diff(np.r_[first, k.size])
    two = first[size == 2]
    i1, i2 = order[two], order[two + 1]
    ndf = np.maximum(np.asarray(tracks["ndf"], float), 1)
    good = (np.asarray(tracks["chi2"]) / ndf < float(cfg["max_chi2_ndf"])) & \
           (np.asarray(tracks["n_pxd"]) + np.asarray(tracks["n_svd"]) >= int(cfg["min_vxd_hits"]))
    q = np.asarray(tracks["charge"])
    dphi = np.asarray(tracks["phi0"])[i1] - np.asarray(tracks["phi0"])[i2] - np.pi
    acol = np.abs(np.arctan2(np.sin(dphi), np.cos(dphi)))
    sel = good[i1] & good[i2] & (q[i1] * q[i2] < 0) & (acol < float(cfg["max_acol"]))
    return i1[sel], i2[sel]


def fit_beamspot(tracks: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    """BeamSpot payload arrays from cDST tracks (see the module docstring)."""
    i1, i2 = select_pairs(tracks, cfg)
    d0, phi = np.asarray(tracks["d0"], float), np.asarray(tracks["phi0"], float)
    z0, tl = np.asarray(tracks["z0"], float), np.asarray(tracks["tanl"], float)
    a = 0.5 * (d0[i1] - d0[i2])
    b = 0.5 * (d0[i1] + d0[i2])
    s, c = np.sin(phi[i1]), np.cos(phi[i1])
    keep = np.ones(a.size, bool)
    k = float(cfg["outlier_sigma"])
    for _ in range(3):
        # transverse position: least squares of a on (sin, -cos)
        A = np.stack([s, -c], 1)
        Ak = A[keep]
        ata_inv = np.linalg.inv(Ak.T @ Ak)
        xy = ata_inv @ (Ak.T @ a[keep])
        r = a - A @ xy
        meat = (Ak * r[keep, None] ** 2).T @ Ak
        cov_xy = ata_inv @ meat @ ata_inv
        # transverse size: regression of r^2 - b^2 on (s^2, c^2, -2 s c)
        B = np.stack([s * s, c * c, -2 * s * c], 1)
        y = r * r - b * b
        Bk = B[keep]
        btb_inv = np.linalg.inv(Bk.T @ Bk)
        sz = btb_inv @ (Bk.T @ y[keep])
        res2 = y[keep] - Bk @ sz
        cov_sz = btb_inv @ ((Bk * res2[:, None] ** 2).T @ Bk) @ btb_inv
        # longitudinal
        zt1 = z0[i1] + (xy[0] * np.cos(phi[i1]) + xy[1] * np.sin(phi[i1])) * tl[i1]
        zt2 = z0[i2] + (xy[0] * np.cos(phi[i2]) + xy[1] * np.sin(phi[i2])) * tl[i2]
        zv, dz = 0.5 * (zt1 + zt2), 0.5 * (zt1 - zt2)
        zk, dzk = zv[keep], dz[keep]
        z = zk.mean()
        szz = np.mean((zk - z) ** 2) - np.mean(dzk ** 2)
        # outliers: transverse residual against its expected width, z against the luminous length
        var_t = np.maximum(B @ sz, 0) + np.mean(b[keep] ** 2)
        new = (np.abs(r) < k * np.sqrt(var_t)) & (np.abs(b) < k * np.sqrt(np.mean(b[keep] ** 2))) & \
              (np.abs(zv - z) < k * np.sqrt(max(szz, 0) + np.mean(dzk ** 2)))
        if np.array_equal(new, keep):
            break
        keep = new
    n = int(keep.sum())
    var_z = np.var(zk) / n
    position = np.array([xy[0], xy[1], z])
    position_error = np.zeros((3, 3))
    position_error[:2, :2] = cov_xy
    position_error[2, 2] = var_z
    raw_size = np.zeros((3, 3))
    raw_size[0, 0], raw_size[1, 1], raw_size[0, 1] = sz[0], sz[1], sz[2]
    raw_size[1, 0] = sz[2]
    raw_size[2, 2] = szz
    # errors: transverse from the regression; szz from the variance of the per-event estimator
    q = (zk - z) ** 2 - dzk ** 2
    size_error = np.zeros((3, 3))
    size_error[0, 0], size_error[1, 1] = np.sqrt(cov_sz[0, 0]), np.sqrt(cov_sz[1, 1])
    size_error[0, 1] = size_error[1, 0] = np.sqrt(cov_sz[2, 2])
    size_error[2, 2] = np.std(q) / np.sqrt(n)
    # closest positive semi-definite matrix (eigenvalues clipped at 0)
    w, v = np.linalg.eigh(raw_size)
    size = (v * np.maximum(w, 0)) @ v.T
    return {"position": position, "position_error": position_error, "size": size,
            "size_unconstrained": raw_size, "size_error": size_error, "n_events": np.array([n], np.int64)}


def read_tracks(files) -> dict[str, np.ndarray]:
    """The ``tracks`` tree of cDST files, with a ``file`` column (index of the file)."""
    from b2luca.production import read_cdst

    parts = []
    for i, f in enumerate(files):
        t = read_cdst([f], ("tracks",))["tracks"]
        if t:
            t["file"] = np.full(t["event"].size, i, np.int64)
            parts.append(t)
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def calibrate(job) -> None:
    """Fit the beam spot from the di-muon cDST tracks and store it in job.output_db."""
    from calibrations._common import require_files

    cfg = {**settings.expert_config, **job.expert_config}
    files = job.files("mumu_tight_or_highm_calib")
    require_files(files, f"{settings.name}/mumu_tight_or_highm_calib")
    tracks = read_tracks(files)
    if not tracks:
        raise RuntimeError(f"{settings.name}: no tracks in {len(files)} cDST files")
    i1, _ = select_pairs(tracks, cfg)
    if i1.size < int(cfg["min_events"]):
        raise RuntimeError(f"{settings.name}: {i1.size} selected di-muon events, need {cfg['min_events']}")
    result = fit_beamspot(tracks, cfg)
    job.log.info("%s: %d events: position %s mm, sizes %s mm", settings.name, int(result["n_events"][0]),
                 np.round(result["position"], 5).tolist(), np.round(np.sqrt(np.diag(result["size"])), 5).tolist())
    job.output_db.store(PAYLOAD, result, job.output_iov)
