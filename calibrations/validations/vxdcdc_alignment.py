"""Validation of the VXD and CDC alignment: checks that fail when the result is wrong.

With the simulation truth (``reference_global_tag`` set; DESIGN §5), the residual misalignment
fitted - true, the truth expressed in the alignment's global frame (:func:`b2luca.alignment.frame.truth_in_frame`:
the overall position and orientation of the tracking system fixed to nominal), weak modes NOT projected away:

* pulls (fitted - true) / error per group -- VXD du, dv, dw, rotations; CDC dx/dy, dphi -- must have
  mean 0 ± k/sqrt(N) and width 1 ± k/sqrt(2N) (``pull_tolerance_sigma`` = k); with the calibration's
  covariance file (``vxdalignment_cov.npz`` in the job directory) the pulls of each group are decorrelated with its covariance block (the weak modes correlate
  the parameters of a group: one coherent fluctuation of the CDC "dy growing with the layer" mode, within its
  error, gives diagonal pulls of width ~0.5 and a trend to ~40 um);
* every mode of :mod:`b2luca.alignment.weak_modes` (global translations/rotations and the weak modes:
  radial expansion, telescope, curl, twist, clamshell, bowing, elliptical, CDC twist/sagitta), fitted jointly
  to fitted - true, must be within ``weak_mode_tolerance_sigma`` of its statistical error (propagated from
  the payloads' ``params_error``; with the covariance file, the (P, P) covariance of the
  packed VXD + CDC vector of :class:`b2luca.alignment.weak_modes.ParameterLayout`, that is used instead:
  diagonal errors ignore the correlations along the weak modes and understate their errors).
  The amplitudes before the alignment (constants in force - true) are reported next to them.

Family-wise tolerance: at k = 3 per check, the 32 truth checks of an interval (12 pull checks, 20 modes) and
the 5 data-only ones fail a perfect result about 8 % of the time (tests/calibrations/test_vxdcdc_alignment_validation.py
measures it).  The k of every check is chosen (Šidák, :func:`family_k`) so that the family of all checks fails a
correct result with probability ``family_false_failure_rate`` (0.3 %; k = 3.94 for 37 checks);
``pull_tolerance_sigma`` / ``weak_mode_tolerance_sigma`` set k explicitly instead.  A pull group with fewer than
``min_pulls`` parameters with an error, and a mode the parameters with an error do not determine, report "not
enough data" (a figure, no verdict).  A time-dependent result is checked interval by interval, each against the
truth of its own first run (figures prefixed ``e<exp>r<run>_``).  The covariance comes from
``vxdalignment_cov.npz``, written by the calibration beside its payloads.

Precision requirement (needs no truth: checked on real data too).  A result can be consistent with the truth and
still useless: without cosmics the modes they pin are known only to several times their error with cosmics, the
pulls stay ~1 and every check above passes.  So the statistical error of every mode amplitude
(:func:`mode_errors`: the same joint projection, from the covariance file) must be at most its requirement,
``max_weak_mode_error`` per family of :data:`MODE_FAMILIES` (or per mode name; an alignment whose weak mode is
known only to +-50 um is not usable for physics).  The modes above it fail with one reason naming each mode,
its error and its requirement, and the tracks used per sample ("add cosmics" when there were none); a mode the
fitted parameters do not determine stays "not enough data" (no error, no precision verdict); an undefined
error (nothing fixes the mode, e.g. no frame constraints) fails.  Defaults [um / urad] and the largest error of
each family they were set against (seed 20261124, 8 runs): the demo (``b2luca run configs/demo.yaml``, reading
600/400/120 di-muon/cosmic/hadron events per file), the small test buckets (150 cosmics per run; run as
``benchmarks/alignment_seed_study.py`` does) and the demo with ``cosmic_calib.max_processed_events_per_file: 0``:

======================  =======  ==================  ==================  ==========================
family                  default  demo                test buckets        demo without cosmics
======================  =======  ==================  ==================  ==========================
``vxd_translation_um``  5        1.2 (tz)            1.4 (tz)            **12.8** (tz)
``vxd_rotation_urad``   50       6.0 (rx)            6.1 (rx)            7.8 (rz)
``vxd_weak_um``         8        1.1 (telescope)     1.5 (telescope)     **18.5** (telescope)
``vxd_weak_urad``       50       6.2 (clamshell)     7.9 (clamshell)     16.8 (clamshell)
``cdc_translation_um``  15       5.4 (tz)            6.5 (tz)            **41.1** (tz)
``cdc_rotation_urad``   10       2.6 (rz)            3.4 (twist)         **23.8** (twist)
``cdc_weak_um``         30       16.3 (sagitta x)    16.4 (sagitta x)    22.2 (sagitta x)
======================  =======  ==================  ==================  ==========================

Scales: 50 urad is ~7 um at the outer SVD layer (r = 135 mm); 10 urad is ~11 um at the outer CDC layer (1111
mm).  The rotations, the VXD urad modes and the CDC sagitta are not pinned by the cosmics in particular (their
requirement is a physics bound, not a separator); the z translations, the VXD telescope and the CDC twist are:
without cosmics they miss the requirement by 2.4-2.7x, and the demo's worst mode uses 0.54 of its own.  The
2-run calibration test buckets know the CDC modes less well (with cosmics: CDC tz 12.9 um, sagitta 51 um) and
set looser ``cdc_translation_um`` / ``cdc_weak_um`` explicitly in their expert_config.

Always (data-only; on real data these and the precision requirement are the only checks and the verdict says
so), on di-muon events
refitted with the constants in force before and with the new alignment:

* track chi2/ndf: the median must not get worse;
* overlap residuals: tracks crossing two overlapping sensors of a VXD layer (neighbouring ladders) give the
  difference of their two residuals (u and v); per sensor pair its mean must be compatible with 0 after the
  alignment (chi2/ndf of the pair means within 1 ± k sqrt(2/ndf)), and the spread must not grow.  A pair
  mean's statistical error uses the variance of one difference pooled per layer and kind (a pair's own few
  hits give a heavy-tailed Student t: chi2/ndf ~4 even with the true constants).  The covariance of the
  pair means adds the alignment's own uncertainty, J Σ Jᵀ: Σ = the covariance from the file (else
  ``params_error``²), J = d(mean)/d(params of both sensors) at fixed tracks (the fit's global derivatives);
  chi2 = meanᵀ C⁻¹ mean.  An alignment off by more than its errors still fails;
* d0 resolution from two-track events: var(d0_1 + d0_2) = 2 sigma_i^2 (the beam spot cancels), its mean
  in phi0 bins compatible with 0 after the alignment, and sigma_i must not get worse; with sigma_i fixed,
  the per-track d0 variance in phi0 bins gives the beam size: var(d0) = sigma_i^2 + (sigma_x sin phi0)^2 +
  (sigma_y cos phi0)^2 (reported, with the beam-spot offset removed per bin).

Writes vxdcdc_alignment.png (pulls, weak-mode amplitudes before/after, overlap residuals, d0 sum and width
vs phi0) and vxdcdc_alignment.csv (every figure).
"""

# no ``from __future__ import annotations``: the native runner loads this file without registering it in
# sys.modules, and dataclasses cannot resolve string annotations of such a module
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from b2luca.alignment.weak_modes import Projection
from b2luca.catalogue import ValidationSettings

settings = ValidationSettings(name="VXDCDCAlignment",
                              description=__doc__,
                              download_files=[],
                              expert_config={"family_false_failure_rate": 0.003,
                                             "pull_tolerance_sigma": None, "weak_mode_tolerance_sigma": None,
                                             "validation_tracks": 1000, "d0_phi_bins": 8,
                                             "min_overlap_hits": 3, "min_pulls": 10,
                                             # largest acceptable statistical error of a mode amplitude, per
                                             # family of MODE_FAMILIES (or per mode name) [um / urad]
                                             "max_weak_mode_error": {"vxd_translation_um": 5.0,
                                                                     "vxd_rotation_urad": 50.0,
                                                                     "vxd_weak_um": 8.0,
                                                                     "vxd_weak_urad": 50.0,
                                                                     "cdc_translation_um": 15.0,
                                                                     "cdc_rotation_urad": 10.0,
                                                                     "cdc_weak_um": 30.0}})

#: written by calibrations/vxdcdc_alignment.py beside its payloads (the full covariance per interval)
COV_FILE = "vxdalignment_cov.npz"

#: data-only checks (track chi2/ndf, overlap pair means, overlap spread, d0 resolution, d0 sum vs phi0)
DATA_CHECKS = 5
#: fewer parameters with an error than this in a pull group: "not enough data" (no verdict from that group)
MIN_PULLS = 10

#: families of :data:`b2luca.alignment.weak_modes.MODE_NAMES` for the precision requirement
#: (``max_weak_mode_error``: one figure per family, or per mode name)
MODE_FAMILIES = {"vxd_translation_um": ("vxd_tx_um", "vxd_ty_um", "vxd_tz_um"),
                 "vxd_rotation_urad": ("vxd_rx_urad", "vxd_ry_urad", "vxd_rz_urad"),
                 "vxd_weak_um": ("vxd_radial_expansion_um", "vxd_telescope_um", "vxd_bowing_um", "vxd_elliptical_um"),
                 "vxd_weak_urad": ("vxd_curl_urad", "vxd_twist_urad", "vxd_clamshell_urad"),
                 "cdc_translation_um": ("cdc_tx_um", "cdc_ty_um", "cdc_tz_um"),
                 "cdc_rotation_urad": ("cdc_rz_urad", "cdc_twist_urad"),
                 "cdc_weak_um": ("cdc_sagitta_x_um", "cdc_sagitta_y_um")}

_MODE_FAMILY = {mode: fam for fam, modes in MODE_FAMILIES.items() for mode in modes}

#: pull groups: name -> (detector, parameter columns)
PULL_GROUPS = {"vxd_du": ("vxd", (0,)), "vxd_dv": ("vxd", (1,)), "vxd_dw": ("vxd", (2,)),
               "vxd_rot": ("vxd", (3, 4, 5)), "cdc_dxdy": ("cdc", (0, 1)), "cdc_dphi": ("cdc", (2,))}


@dataclass
class TrackSample:
    """What the data-only checks need from one refit of a di-muon sample."""

    chi2_ndf: np.ndarray  # (T,)
    overlap_pair: np.ndarray  # (O,) int64 key  sensor_a * 1000 + sensor_b  (* 10 + 0 u / 1 v)
    overlap_diff: np.ndarray  # (O,) residual(a) - residual(b) [mm]
    d0_sum: np.ndarray  # (E,) d0_1 + d0_2 of two-track events [mm]
    d0_sum_phi: np.ndarray  # (E,) phi0 of the first track
    d0: np.ndarray  # (2E,) d0 of the tracks of those events
    d0_phi: np.ndarray  # (2E,)
    #: (O, 12) d(overlap_diff)/d(alignment params of sensor a (6), sensor b (6)) at fixed track parameters;
    #: None: unknown (the alignment's own uncertainty is then left out of the overlap check)
    overlap_deriv: np.ndarray | None = None


@dataclass
class CheckResult:
    """Figures, failure reasons and the arrays the plots need."""

    figures: dict[str, float | str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    pulls: dict[str, np.ndarray] = field(default_factory=dict)  # truth checks: pulls per group
    weak_after: Projection | None = None  # truth checks: modes of fitted - true
    weak_before: Projection | None = None  # truth checks: modes of (constants before) - true
    precision: dict[str, tuple[float, float]] = field(default_factory=dict)  # mode -> (error, largest allowed)
    before: TrackSample | None = None  # data checks: refit with the constants in force before
    after: TrackSample | None = None  # data checks: refit with the new alignment


def _pull_stats(pulls: np.ndarray, k: float) -> dict[str, float]:
    pulls = pulls[np.isfinite(pulls)]
    n = pulls.size
    if n < 2:
        return {"n": float(n), "mean": math.nan, "width": math.nan, "mean_tol": math.nan, "width_tol": math.nan}
    mean = float(pulls.mean())
    return {"n": float(n), "mean": mean, "width": float(np.sqrt(np.mean((pulls - mean) ** 2))),
            "mean_tol": k / math.sqrt(n), "width_tol": k / math.sqrt(2 * n)}


def _decorrelated_pulls(d: np.ndarray, e: np.ndarray, cols: tuple[int, ...], cov: np.ndarray,
                        offset: int) -> np.ndarray:
    """Pulls of the parameters ``d[:, cols]`` decorrelated with their covariance block of ``cov`` (packed
    layout, the block starting at ``offset`` with ``d.shape[1]`` parameters per row): the components of
    ``d`` along the eigenvectors of the block over the square root of the eigenvalue (directions the
    constraints remove, eigenvalue ~0, left out).  With the right covariance they are N(0, 1) and independent;
    with the diagonal errors alone the coherent weak modes give a pull width far from 1 either way."""
    rows, width = d.shape
    idx = (offset + np.arange(rows)[:, None] * width + np.asarray(cols)[None, :]).ravel()
    x = d[:, cols].ravel()
    ok = np.isfinite(x) & np.isfinite(e[:, cols].ravel()) & (e[:, cols].ravel() > 0)
    c = cov[np.ix_(idx[ok], idx[ok])]
    if not np.all(np.isfinite(c)) or not ok.any():
        return (d[:, cols] / e[:, cols]).ravel()
    lam, u = np.linalg.eigh(0.5 * (c + c.T))
    keep = lam > 1e-9 * lam.max()
    return (u[:, keep].T @ x[ok]) / np.sqrt(lam[keep])


def truth_checks(fitted_vxd: np.ndarray, err_vxd: np.ndarray, fitted_cdc: np.ndarray, err_cdc: np.ndarray,
                 true_vxd: np.ndarray, true_cdc: np.ndarray, *, k: float = 3.0, k_weak: float = 3.0,
                 before: tuple[np.ndarray, np.ndarray] | None = None, cov: np.ndarray | None = None,
                 geom=None, frame_dofs: tuple[int, ...] | None = None,
                 frame_sensors: np.ndarray | None = None, min_pulls: int = MIN_PULLS,
                 frame_motion_of: tuple[np.ndarray, np.ndarray] | None = None) -> CheckResult:
    """Pulls per group and weak-mode amplitudes of fitted - true (truth in the alignment frame: the rigid-motion
    degrees of freedom ``frame_dofs`` of the VXD that the alignment's constraints fixed, default :data:`b2luca.alignment.constraints.FRAME_DOFS`).

    Arrays are payload-shaped ((S, 6) VXD, (L, 3) CDC).  ``before``: the constants in force before the
    alignment (their weak-mode amplitudes are reported, not checked; weighted with the same errors).  ``cov``: optional full covariance in
    the packed layout of :class:`b2luca.alignment.weak_modes.ParameterLayout`.
    """
    from b2luca.alignment.frame import frame_motion, truth_in_frame
    from b2luca.alignment.weak_modes import MODE_NAMES, parameter_layout, project
    from b2luca.reco.geometry import nominal_geometry

    geom = geom or nominal_geometry()
    lay = parameter_layout(geom)
    out = CheckResult()
    out.figures["mode"] = "truth"
    from b2luca.alignment.constraints import FRAME_DOFS

    dofs = tuple(FRAME_DOFS if frame_dofs is None else frame_dofs)
    # frame_sensors: the sensors whose motion defined the fit's frame (VXDAlignment's ``frame_sensors``)
    # frame_motion_of: the true (VXD, CDC) of the interval whose constraints fix this interval's frame (a
    # time-dependent interval tied to an earlier one by the tracks is in that interval's frame)
    motion = None
    if frame_motion_of is not None:
        ref = truth_in_frame(frame_motion_of[0], frame_motion_of[1], geom=geom, dofs=dofs, sensors=frame_sensors)
        motion = (ref.translation, ref.rotation)
    frame = truth_in_frame(true_vxd, true_cdc, geom=geom, dofs=dofs, sensors=frame_sensors, motion=motion)
    tv, tc = frame.vxd, frame.cdc
    for name, value in zip(("tx_um", "ty_um", "tz_um", "rx_urad", "ry_urad", "rz_urad"),
                           frame_motion(true_vxd, true_cdc, geom)):
        out.figures[f"truth_vxd_rigid_{name}"] = float(value)  # the frame_dofs components are removed
    d_vxd = np.asarray(fitted_vxd, float) - tv
    d_cdc = np.asarray(fitted_cdc, float) - tc
    e_vxd, e_cdc = np.asarray(err_vxd, float), np.asarray(err_cdc, float)
    pulls = {}
    for group, (det, cols) in PULL_GROUPS.items():
        d, e = (d_vxd, e_vxd) if det == "vxd" else (d_cdc, e_cdc)
        p = (d[:, cols] / e[:, cols]).ravel()
        if cov is not None:  # decorrelated: the weak modes make the parameters of a group strongly correlated
            p = _decorrelated_pulls(d, e, cols, np.asarray(cov, float), 0 if det == "vxd" else 6 * d_vxd.shape[0])
        pulls[group] = p
        st = _pull_stats(p, k)
        out.figures.update({f"{group}_pull_n": st["n"], f"{group}_pull_mean": st["mean"],
                            f"{group}_pull_width": st["width"]})
        if not st["n"] >= min_pulls:  # a width from a handful of pulls cannot tell 1.0 from 1.5
            out.figures[f"{group}_note"] = f"not enough data: {int(st['n'])} parameters with an error " \
                                           f"(a verdict needs >= {min_pulls})"
            continue
        if abs(st["mean"]) > st["mean_tol"]:
            out.reasons.append(f"{group}: pull mean {st['mean']:.2f} outside 0 ± {st['mean_tol']:.2f}")
        if abs(st["width"] - 1.0) > st["width_tol"]:
            out.reasons.append(f"{group}: pull width {st['width']:.2f} outside 1 ± {st['width_tol']:.2f}")
        scale = 1e3 if det == "vxd" and cols[0] < 3 or det == "cdc" and cols[0] < 2 else 1e6
        fitted_rows = np.all(np.isfinite(e[:, cols]) & (e[:, cols] > 0), axis=1)  # elements the fit moved
        out.figures[f"{group}_rms_after_{'um' if scale == 1e3 else 'urad'}"] = \
            float(scale * np.sqrt(np.mean(d[fitted_rows][:, cols] ** 2)))
        out.figures[f"{group}_not_fitted"] = float((~fitted_rows).sum())  # too few hits: left where they were
    out.pulls = pulls
    errors = lay.pack(e_vxd, e_cdc)
    names = determined_modes(lay.pack(d_vxd, d_cdc), errors, geom)
    for name in MODE_NAMES:
        if name not in names:
            out.figures[f"weak_{name}_note"] = "not enough data: the parameters with an error do not determine it"
    after = project(lay.pack(d_vxd, d_cdc), errors, cov=cov, names=names, geom=geom)
    out.weak_after = after
    for name, a, e in zip(after.names, after.amplitude, after.error):
        out.figures[f"weak_{name}"] = float(a)
        out.figures[f"weak_{name}_error"] = float(e)
        if not abs(a) <= k_weak * e:
            out.reasons.append(f"weak mode {name}: amplitude {a:.3g} ± {e:.2g} beyond {k_weak:g} sigma")
    if before is not None:
        b = project(lay.pack(np.asarray(before[0], float) - tv, np.asarray(before[1], float) - tc), errors,
                    names=names, geom=geom)
        out.weak_before = b
        for name, a in zip(b.names, b.amplitude):
            out.figures[f"weak_{name}_before"] = float(a)
    return out


def read_covariance(job_path, exprun: tuple[int, int]) -> np.ndarray | None:
    """The (P, P) covariance of the interval that contains run ``exprun`` from ``<job_path>/`` :data:`COV_FILE`
    (None: no file, e.g. ``store_covariance`` off).  Intervals are named by their first run: the latest one
    starting at or before ``exprun``."""
    from pathlib import Path

    path = Path(job_path) / COV_FILE
    if not path.is_file():
        return None
    with np.load(path) as z:
        starts = sorted((tuple(int(x) for x in k.split("_")[1:]), k) for k in z.files if k.startswith("cov_"))
        chosen = [k for start, k in starts if start <= tuple(exprun)]
        if not chosen:
            raise ValueError(f"{path}: no covariance for run {exprun[0]},{exprun[1]} (intervals start at "
                             f"{', '.join(f'{a},{b}' for (a, b), _ in starts)})")
        return np.asarray(z[chosen[-1]], float)


def determined_modes(delta: np.ndarray, errors: np.ndarray, geom) -> tuple[str, ...]:
    """The modes of :data:`b2luca.alignment.weak_modes.MODE_NAMES` that the parameters with a finite error
    determine jointly (in order; a mode that adds no rank to the ones before it is left out: its amplitude
    cannot be measured from these parameters -- "not enough data", not a pass or a failure)."""
    from b2luca.alignment.weak_modes import MODE_NAMES, mode_matrix

    use = np.isfinite(delta) & np.isfinite(errors) & (errors > 0)
    m = mode_matrix(MODE_NAMES, geom)[use] / errors[use, None]
    m = m / np.maximum(np.linalg.norm(m, axis=0), 1e-300)
    kept: list[int] = []
    for j in range(m.shape[1]):
        if np.linalg.matrix_rank(m[:, kept + [j]], tol=1e-8) == len(kept) + 1:
            kept.append(j)
    return tuple(MODE_NAMES[j] for j in kept)


# --- precision requirement -------------------------------------------------------------------------
def mode_requirements(overrides=None) -> dict[str, float]:
    """The largest acceptable statistical error of each mode of :data:`b2luca.alignment.weak_modes.MODE_NAMES`
    [its unit, um or urad]: the family figures of ``settings.expert_config["max_weak_mode_error"]``, updated by
    ``overrides`` (keys: a family of :data:`MODE_FAMILIES` or a mode name; a mode name wins over its family).

    Raises ValueError naming every unknown key and every value that is not a positive number."""
    defaults = settings.expert_config["max_weak_mode_error"]
    given = dict(overrides or {})
    problems = [f"max_weak_mode_error.{key}: not a mode family ({', '.join(MODE_FAMILIES)}) or mode name"
                for key in given if key not in MODE_FAMILIES and key not in _MODE_FAMILY]
    problems += [f"max_weak_mode_error.{key}: expected a positive number [um or urad], got {value!r}"
                 for key, value in given.items() if isinstance(value, bool) or not isinstance(value, (int, float))
                 or not value > 0]
    if problems:
        raise ValueError(f"{settings.name}: " + "; ".join(problems))
    family = {**defaults, **{k: v for k, v in given.items() if k in MODE_FAMILIES}}
    return {name: float(given.get(name, family[fam])) for name, fam in _MODE_FAMILY.items()}


def mode_errors(err_vxd: np.ndarray, err_cdc: np.ndarray, cov: np.ndarray | None, geom) -> dict[str, float]:
    """Statistical error of each mode amplitude that the parameters with an error determine (the others are
    left out: "not enough data"), fitted jointly as in :func:`truth_checks`; from ``cov`` (packed layout) when
    given, else from the diagonal errors.  Needs no truth: the error of an amplitude does not depend on it."""
    from b2luca.alignment.weak_modes import parameter_layout, project

    errors = parameter_layout(geom).pack(np.asarray(err_vxd, float), np.asarray(err_cdc, float))
    zero = np.zeros_like(errors)
    names = determined_modes(zero, errors, geom)
    if not names:
        return {}
    with np.errstate(invalid="ignore"):  # modes nothing pins (no frame constraints): variance < 0 -> NaN
        p = project(zero, errors, cov=cov, names=names, geom=geom)
    return {n: float(e) for n, e in zip(p.names, p.error)}


def precision_checks(errors: dict[str, float], required: dict[str, float],
                     tracks_by_sample: dict[str, int] | None = None) -> CheckResult:
    """Each mode amplitude's statistical error (``errors``, e.g. :func:`mode_errors`) must be at most its
    requirement (``required``, :func:`mode_requirements`): an alignment whose weak mode is known only to
    +-50 um is not usable for physics, even if it is statistically consistent with the truth.  A mode without
    an error (not determined) is not checked here; a NaN error (nothing pins the mode) fails.
    ``tracks_by_sample``: tracks the calibration used per collection, named in the failure reason."""
    out = CheckResult()
    over = []
    for name, e in errors.items():
        req = required[name]
        unit = name.rsplit("_", 1)[1]
        out.figures[f"weak_{name}_error"] = float(e)
        out.figures[f"weak_{name}_max_error"] = req
        out.precision[name] = (float(e), req)
        if not math.isfinite(e):
            over.append(f"{name} error undefined (nothing fixes it) > required {req:g} {unit}")
        elif not e <= req:
            over.append(f"{name} error {e:.3g} {unit} > required {req:g} {unit}")
    out.figures["weak_modes_above_max_error"] = float(len(over))
    ratios = [e / r for e, r in out.precision.values()]
    out.figures["weak_mode_worst_error_over_max"] = float(np.max(ratios)) if ratios else math.nan
    if over:
        samples = tracks_by_sample or {}
        used = ", ".join(f"{n} {c}" for n, c in samples.items()) if samples else "unknown"
        hint = "add cosmics (cosmic_calib: tracks through both halves, off the IP)" \
            if samples and not samples.get("cosmic_calib") else \
            "add tracks of the samples that pin them (cosmics, off-IP tracks)"
        out.reasons.append(f"weak modes known less precisely than required ({', '.join(over)}): the track-sample "
                           f"mix does not pin them (tracks used: {used}); {hint}")
    return out


# --- data-only checks -------------------------------------------------------------------------------
def track_sample(raw, constants) -> TrackSample:
    """Refit ``raw`` with ``constants`` and collect chi2/ndf, overlap residual differences and d0's."""
    from b2luca.reco.geometry import nominal_geometry
    from b2luca.reco.measurements import build_measurements
    from b2luca.reco.robust import fit_robust

    fit = fit_robust(build_measurements(raw, constants), constants, row_keys=("residual", "global_derivs"))
    meas = fit.meas
    chi2_ndf = fit.chi2 / np.maximum(fit.ndf, 1)
    ok = np.isfinite(chi2_ndf) & (fit.ndf > 0)
    assert fit.residual is not None
    # overlaps: two hits of one track, same layer and measurement kind, different sensors
    geom = nominal_geometry()
    vxd = (meas.kind < 2) & np.isfinite(fit.residual) & ok[meas.track]
    rows = np.flatnonzero(vxd)
    lay = geom.layer[meas.sensor[rows]]
    key = (meas.track[rows] * 10 + lay) * 2 + meas.kind[rows]
    o = np.lexsort((meas.sensor[rows], key))
    rows, key = rows[o], key[o]
    same = key[1:] == key[:-1]
    a, b = rows[:-1][same], rows[1:][same]
    diff_sensor = meas.sensor[a] != meas.sensor[b]
    a, b = a[diff_sensor], b[diff_sensor]
    pair = (meas.sensor[a].astype(np.int64) * 1000 + meas.sensor[b]) * 10 + meas.kind[a]
    odiff = fit.residual[a] - fit.residual[b]
    assert fit.global_derivs is not None  # derivatives of the prediction: the residual's are the negative
    oderiv = np.concatenate([-fit.global_derivs[a], fit.global_derivs[b]], axis=1)
    # two-track events
    ev = meas.track_key[:, 0]
    good = ok & np.isfinite(fit.params[:, 0])
    evs, counts = np.unique(ev[good], return_counts=True)
    two = np.isin(ev, evs[counts == 2]) & good
    idx = np.flatnonzero(two)
    pairs = idx[np.argsort(ev[idx], kind="stable")].reshape(-1, 2)
    d0 = fit.params[pairs, 0]
    phi = fit.params[pairs, 1]
    return TrackSample(chi2_ndf=chi2_ndf[ok], overlap_pair=pair, overlap_diff=odiff, d0_sum=d0.sum(axis=1),
                       d0_sum_phi=phi[:, 0], d0=d0.ravel(), d0_phi=phi.ravel(), overlap_deriv=oderiv)


def overlap_figures(sample: TrackSample, min_hits: int = 3, cov: np.ndarray | None = None) -> dict[str, float]:
    """Spread of the overlap residual differences and chi2/ndf of the per-pair means against 0.

    A pair mean's statistical error is sqrt(v / n), v the variance of one difference pooled over the pairs of
    the same layer and measurement kind (not the pair's own sample variance: see the comment below).
    Without ``cov`` the means are compared with these errors alone.  With ``cov`` -- the covariance of
    the alignment parameters that produced ``sample`` (packed layout, VXD (S, 6) row-major first; a 1D array is
    taken as its diagonal, i.e. variances) -- the alignment's own uncertainty is added: the covariance of the
    pair means is diag(sample variance / n) + J cov Jᵀ, J = the mean of ``sample.overlap_deriv`` per pair
    (d mean / d params of both sensors at fixed tracks), and chi2 = meanᵀ C⁻¹ mean (pairs sharing a sensor,
    or tied by a weak mode, are correlated).  An alignment off by more than its errors still fails."""
    diff = sample.overlap_diff
    if diff.size == 0:
        return {"n": 0.0, "rms_um": math.nan, "pair_chi2": math.nan, "pair_ndf": 0.0}
    med = np.median(diff)
    keep = np.abs(diff - med) < 5 * 1.4826 * np.median(np.abs(diff - med)) + 1e-12  # drop wrong-hit outliers
    diff, pair = diff[keep], sample.overlap_pair[keep]
    up, inv, cnt = np.unique(pair, return_inverse=True, return_counts=True)
    mean_all = np.bincount(inv, diff) / cnt
    # the variance of one difference, pooled over the pairs of one layer and measurement kind (within-pair
    # spread): a pair's own sample variance from its few hits (often 3-5) makes mean / (s / sqrt(n)) a
    # Student t with n - 1 dof, whose square has mean (n - 1) / (n - 3) -- infinite for n = 3 -- and inflated
    # the chi2/ndf to ~4 even with the true constants
    from b2luca.reco.geometry import nominal_geometry

    geom = nominal_geometry()
    group = geom.layer[np.clip(up // 10 // 1000, 0, geom.n_sensors - 1)] * 10 + up % 10
    gu, ginv = np.unique(group, return_inverse=True)
    ss = np.bincount(ginv[inv], (diff - mean_all[inv]) ** 2, minlength=gu.size)
    dof = np.bincount(ginv, cnt - 1, minlength=gu.size)
    var_pooled = ss / np.maximum(dof, 1)
    use = (cnt >= min_hits) & (dof[ginv] >= 2)
    mean = mean_all[use]
    stat = np.maximum(var_pooled[ginv][use] / cnt[use], 1e-16)
    chi2_stat = float(np.sum(mean ** 2 / stat))
    res = {"n": float(diff.size), "rms_um": float(1e3 * np.sqrt(np.mean((diff - diff.mean()) ** 2))),
           "pair_chi2": chi2_stat, "pair_ndf": float(use.sum()), "pair_chi2_stat": chi2_stat}
    if cov is None or sample.overlap_deriv is None or not use.any():
        return res
    deriv = sample.overlap_deriv[keep]
    jsum = np.stack([np.bincount(inv, deriv[:, c], minlength=up.size) for c in range(12)], axis=1)
    jac = jsum[use] / cnt[use, None]
    sens = np.stack([up[use] // 10 // 1000, up[use] // 10 % 1000], axis=1)
    idx = (6 * sens[:, :, None] + np.arange(6)).reshape(-1, 12)  # (N, 12) packed indices of both sensors
    cov = np.asarray(cov, float)
    flat = np.unique(idx)
    mat = np.zeros((mean.size, flat.size))  # J over the parameters involved
    np.add.at(mat, (np.repeat(np.arange(mean.size), 12), np.searchsorted(flat, idx).ravel()), jac.ravel())
    sub = np.nan_to_num(cov[flat] if cov.ndim == 1 else cov[np.ix_(flat, flat)])  # unknown: no contribution
    c_align = (mat * sub) @ mat.T if cov.ndim == 1 else mat @ sub @ mat.T
    c_tot = np.diag(stat) + 0.5 * (c_align + c_align.T)
    res["pair_chi2"] = float(mean @ np.linalg.solve(c_tot, mean))
    res["align_err_um_median"] = float(1e3 * np.median(np.sqrt(np.maximum(np.diag(c_align), 0.0))))
    res["stat_err_um_median"] = float(1e3 * np.median(np.sqrt(stat)))
    return res


def d0_beam_corrected(sample: TrackSample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d0 with the beam-spot offset ``x_b sin(phi0) - y_b cos(phi0)`` fitted and removed (tails dropped).

    Returns (d0 - offset, phi0, (x_b, y_b)) [mm]."""
    d0, phi = sample.d0, sample.d0_phi
    basis = np.stack([np.sin(phi), -np.cos(phi)], axis=1)
    ok = np.ones(d0.size, bool)
    xy = np.zeros(2)
    for _ in range(3):  # robust: refit without the tails
        if ok.sum() < 3:
            break
        xy, *_ = np.linalg.lstsq(basis[ok], d0[ok], rcond=None)
        r = d0 - basis @ xy
        ok = np.abs(r) < 5 * 1.4826 * np.median(np.abs(r[ok])) + 1e-12
    return (d0 - basis @ xy)[ok], phi[ok], xy


def d0_figures(sample: TrackSample, n_bins: int = 8) -> dict[str, float]:
    """sigma_i from two-track events; d0-sum mean per phi0 bin against 0; beam size sigma_x, sigma_y."""
    s = sample.d0_sum
    res: dict[str, float] = {"n_events": float(s.size)}
    if s.size < 2 * n_bins:
        return res | {"sigma_i_um": math.nan, "sigma_i_err_um": math.nan, "sum_chi2": math.nan, "sum_ndf": 0.0,
                      "sigma_x_um": math.nan, "sigma_y_um": math.nan}
    med = np.median(s)
    keep = np.abs(s - med) < 5 * 1.4826 * np.median(np.abs(s - med))
    s, phi_s = s[keep], sample.d0_sum_phi[keep]
    sigma_i = float(np.std(s, ddof=1) / np.sqrt(2.0))
    res["sigma_i_um"] = 1e3 * sigma_i
    res["sigma_i_err_um"] = 1e3 * sigma_i / np.sqrt(2.0 * (s.size - 1))
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    ib = np.clip(np.digitize(phi_s, edges) - 1, 0, n_bins - 1)
    chi2, ndf = 0.0, 0
    for b in range(n_bins):
        x = s[ib == b]
        if x.size >= 3:
            chi2 += float(x.mean() ** 2 / (x.var(ddof=1) / x.size))
            ndf += 1
    res["sum_mean_um"] = float(1e3 * s.mean())
    res["sum_chi2"], res["sum_ndf"] = chi2, float(ndf)
    # per-track d0 vs phi0: the beam-spot offset d0 = x_b sin(phi0) - y_b cos(phi0) is fitted and removed, then
    # the variance per phi0 bin is sigma_i^2 + (sigma_x sin phi0)^2 + (sigma_y cos phi0)^2
    d0, phi, xy = d0_beam_corrected(sample)
    res["beam_x_um"], res["beam_y_um"] = float(1e3 * xy[0]), float(1e3 * xy[1])
    ib = np.clip(np.digitize(phi, edges) - 1, 0, n_bins - 1)
    rows, rhs, w = [], [], []
    for b in range(n_bins):
        x = d0[ib == b]
        if x.size >= 5:
            sel = ib == b
            v = float(np.mean(x ** 2))  # offset already removed
            rows.append([np.mean(np.sin(phi[sel]) ** 2), np.mean(np.cos(phi[sel]) ** 2)])
            rhs.append(v - sigma_i ** 2)
            w.append(1.0 / (v * np.sqrt(2.0 / x.size)))
    if len(rows) >= 3:
        a = np.array(rows) * np.array(w)[:, None]
        sol, *_ = np.linalg.lstsq(a, np.array(rhs) * np.array(w), rcond=None)
        cov = np.linalg.pinv(a.T @ a)
        for i, axis in enumerate("xy"):  # sigma^2 may fluctuate below 0: report the signed sqrt, and the error
            res[f"sigma_{axis}_um"] = float(1e3 * np.sign(sol[i]) * np.sqrt(abs(sol[i])))
            res[f"sigma{axis}2_err_um2"] = float(1e6 * np.sqrt(cov[i, i]))
    else:
        res["sigma_x_um"] = res["sigma_y_um"] = math.nan
    return res


def data_checks(before: TrackSample, after: TrackSample, *, k: float = 3.0, n_bins: int = 8,
                min_overlap_hits: int = 3, cov_after: np.ndarray | None = None) -> CheckResult:
    """The data-only checks (no truth): chi2/ndf, overlap residuals, d0 from two-track events.

    ``cov_after``: covariance (or variances) of the new alignment's parameters, see :func:`overlap_figures`."""
    out = CheckResult()
    chi_b, chi_a = float(np.median(before.chi2_ndf)), float(np.median(after.chi2_ndf))
    out.figures.update(track_chi2_ndf_before=chi_b, track_chi2_ndf_after=chi_a)
    if chi_a > chi_b * (1.0 + k / math.sqrt(max(after.chi2_ndf.size, 1))):
        out.reasons.append(f"track chi2/ndf got worse: {chi_a:.3f} after, {chi_b:.3f} before")
    ob, oa = overlap_figures(before, min_overlap_hits), overlap_figures(after, min_overlap_hits, cov_after)
    for tag, f in (("before", ob), ("after", oa)):
        out.figures.update({f"overlap_n_{tag}": f["n"], f"overlap_rms_um_{tag}": f["rms_um"],
                            f"overlap_pair_chi2_ndf_{tag}": f["pair_chi2"] / max(f["pair_ndf"], 1.0)})
    if "align_err_um_median" in oa:  # the alignment's own uncertainty was included
        out.figures.update(overlap_pair_chi2_ndf_after_stat_only=oa["pair_chi2_stat"] / max(oa["pair_ndf"], 1.0),
                           overlap_pair_align_err_um_median=oa["align_err_um_median"],
                           overlap_pair_stat_err_um_median=oa["stat_err_um_median"])
    if oa["pair_ndf"] > 0:
        lim = 1.0 + k * math.sqrt(2.0 / oa["pair_ndf"])
        if oa["pair_chi2"] / oa["pair_ndf"] > lim:
            out.reasons.append(f"overlap residuals: pair means chi2/ndf {oa['pair_chi2'] / oa['pair_ndf']:.2f} "
                               f"above {lim:.2f} ({int(oa['pair_ndf'])} sensor pairs)")
        if oa["rms_um"] > ob["rms_um"] * (1.0 + k / math.sqrt(2.0 * max(oa["n"], 1.0))):
            out.reasons.append(f"overlap residuals: spread {oa['rms_um']:.1f} um after, {ob['rms_um']:.1f} before")
    else:
        out.figures["overlap_note"] = f"no sensor pair with >= {min_overlap_hits} overlap hits"
    db, da = d0_figures(before, n_bins), d0_figures(after, n_bins)
    for tag, f in (("before", db), ("after", da)):
        for key, value in f.items():
            out.figures[f"d0_{key}_{tag}"] = value
    if da.get("sum_ndf", 0.0) > 0:
        if da["sigma_i_um"] > db["sigma_i_um"] + k * math.hypot(da["sigma_i_err_um"], db["sigma_i_err_um"]):
            out.reasons.append(f"d0 resolution got worse: sigma_i {da['sigma_i_um']:.1f} um after, "
                               f"{db['sigma_i_um']:.1f} before")
        lim = 1.0 + k * math.sqrt(2.0 / da["sum_ndf"])
        if da["sum_chi2"] / da["sum_ndf"] > lim:
            out.reasons.append(f"d0_1 + d0_2 vs phi0 not compatible with 0: chi2/ndf "
                               f"{da['sum_chi2'] / da['sum_ndf']:.2f} above {lim:.2f}")
    else:
        out.figures["d0_note"] = "too few two-track events for the d0 checks"
    out.before, out.after = before, after
    return out


# --- plots and the entry point ------------------------------------------------------------------------
def _plot(truth: CheckResult | None, data: CheckResult | None, n_bins: int, precision: CheckResult | None = None):
    from calibrations._common import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    ax = axes.ravel()
    if precision is not None and precision.precision:  # the precision requirement
        names = list(precision.precision)
        err = np.array([precision.precision[n][0] for n in names])
        req = np.array([precision.precision[n][1] for n in names])
        x = np.arange(len(names))
        finite = np.isfinite(err)
        ratio = np.where(finite, err / req, 100.0)  # undefined errors (nothing fixes the mode): drawn at 100
        ax[6].bar(x, np.maximum(ratio, 1e-3), 0.6,
                  color=["C3" if not e <= r else "C0" for e, r in zip(err, req)])
        for i in np.flatnonzero(~finite):
            ax[6].text(x[i], 100.0, "undefined", rotation=90, fontsize=6, ha="center", va="bottom")
        ax[6].axhline(1.0, color="k", ls="--", label="largest acceptable error (max_weak_mode_error)")
        ax[6].set_yscale("log")
        ax[6].set_ylim(top=max(3.0, 3.0 * float(ratio.max())))
        ax[6].set_xticks(x, [f"{n.replace('_um', '').replace('_urad', '')} ({r:g})" for n, r in zip(names, req)],
                         rotation=90, fontsize=6)
        ax[6].set_ylabel("mode error / required (required in um or urad)")
        ax[6].legend(fontsize=7, loc="upper left")
    ax[7].axis("off")
    if truth is not None:
        for group, p in truth.pulls.items():
            ax[0].hist(np.clip(p[np.isfinite(p)], -6, 6), bins=48, range=(-6, 6), histtype="step", label=group)
        ax[0].set_xlabel("(fitted - true) / error (weak modes NOT removed)")
        ax[0].legend(fontsize=7)
        after = truth.weak_after
        assert after is not None
        x = np.arange(len(after.names))
        ax[1].bar(x - 0.2, after.amplitude / after.error, 0.4, label="after")
        if truth.weak_before is not None:
            ax[1].bar(x + 0.2, truth.weak_before.amplitude / after.error, 0.4, label="before")
            ax[1].set_yscale("symlog", linthresh=3)
        ax[1].axhspan(-3, 3, color="0.9", zorder=0)
        ax[1].set_xticks(x, [n.replace("_um", "").replace("_urad", "") for n in after.names], rotation=90,
                         fontsize=6)
        ax[1].set_ylabel("mode amplitude / its error (fitted - true)")
        ax[1].legend(fontsize=7)
    else:
        for a in ax[:2]:
            a.text(0.5, 0.5, "no truth: data-only checks", ha="center", transform=a.transAxes)
    if data is not None:
        edges = np.linspace(-np.pi, np.pi, n_bins + 1)
        for tag, s in (("before", data.before), ("after", data.after)):
            assert s is not None
            ax[2].hist(np.clip(1e3 * s.overlap_diff, -300, 300), bins=60, range=(-300, 300), histtype="step",
                       label=tag)
            ax[3].hist(np.clip(1e3 * s.d0_sum, -300, 300), bins=60, range=(-300, 300), histtype="step", label=tag)
            ib = np.clip(np.digitize(s.d0_sum_phi, edges) - 1, 0, n_bins - 1)
            c = 0.5 * (edges[1:] + edges[:-1])
            m = [1e3 * np.median(s.d0_sum[ib == b]) if np.any(ib == b) else np.nan for b in range(n_bins)]
            ax[4].plot(c, m, "o-", label=tag)
            d0c, phic, _xy = d0_beam_corrected(s)
            ibt = np.clip(np.digitize(phic, edges) - 1, 0, n_bins - 1)
            w = [1e3 * np.sqrt(np.mean(d0c[ibt == b] ** 2)) if np.sum(ibt == b) > 2 else np.nan
                 for b in range(n_bins)]
            ax[5].plot(c, w, "o-", label=tag)
        ax[2].set_xlabel("overlap residual difference [um]")
        ax[3].set_xlabel("d0_1 + d0_2 [um] (two-track events)")
        ax[4].set_xlabel("phi0")
        ax[4].set_ylabel("median d0_1 + d0_2 [um]")
        ax[5].set_xlabel("phi0")
        ax[5].set_ylabel("RMS of d0, beam-spot offset removed [um]")
        for a in ax[2:6]:
            a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def family_k(n_checks: int, rate: float) -> float:
    """Two-sided k (in sigma) per check so that ``n_checks`` independent checks of a correct result fail
    together with probability ``rate`` (Šidák: per check 1 - (1 - rate)^(1/n))."""
    per_check = -math.expm1(math.log1p(-rate) / max(n_checks, 1))
    return NormalDist().inv_cdf(1.0 - per_check / 2.0)  # not scipy.stats: its import alone took 0.5-1.9 s


def _intervals(job_path) -> list[tuple[tuple[int, int], dict, dict]]:
    """((exp, run) first run, VXDAlignment, CDCAlignment) per interval of the VXD payloads (newest revision
    per IoV; the CDC payload valid for that first run)."""
    from pathlib import Path

    from b2luca.conditions import LocalDatabase
    from b2luca.contract import OUTPUT_DB_DIR
    from b2luca.iov import ExpRun
    from calibrations._common import calibration_output

    calibration_output(job_path, "VXDCDCAlignment", "VXDAlignment")  # one clear error when there is none
    db = LocalDatabase(Path(job_path) / OUTPUT_DB_DIR / "VXDCDCAlignment")
    newest = {}
    for e in db.entries():
        if e.name == "VXDAlignment":
            newest[(e.iov.exp_low, e.iov.run_low)] = e
    return [(first, db.read(e), db.read("CDCAlignment", ExpRun(*first))) for first, e in sorted(newest.items())]


def run_validation(job_path, input_data_path, requested_iov, expert_config, **kwargs):
    """Validate VXDAlignment + CDCAlignment (see the module docstring); returns a Verdict.

    Every interval of a time-dependent result is compared with the truth of its own first run."""
    import copy
    import json
    from pathlib import Path

    from b2luca.alignment.weak_modes import MODE_NAMES
    from b2luca.contract import Verdict, chain_from_caf_config, read_input_data
    from b2luca.iov import ExpRun
    from b2luca.reco.geometry import nominal_geometry
    from b2luca.reco.measurements import load_constants
    from b2luca.reco.raw import first_events, read_raw
    from calibrations._common import expert_config_dict, first_exprun, save_figure, truth_or_none, write_csv
    from calibrations.validations._alignment_trend import trend_section

    cfg = {**settings.expert_config, **expert_config_dict(expert_config)}
    n_bins = int(cfg["d0_phi_bins"])
    geom = nominal_geometry()
    intervals = _intervals(job_path)
    config = json.loads((Path(job_path) / "caf_config.json").read_text())
    chain_before = chain_from_caf_config(config).without_bucket_results(("VXDAlignment", "CDCAlignment"))
    files = [(p, er) for p, er in read_input_data(input_data_path).get("mumu_tight_or_highm_calib", [])][:1]
    with_truth = [truth_or_none(kwargs.get("reference_db"), "VXDAlignment", [*first, -1, -1]) is not None
                  for first, _v, _c in intervals]
    # the family of checks: per interval with truth 2 per pull group + one per weak mode; 5 data-only checks
    n_checks = sum(with_truth) * (2 * len(PULL_GROUPS) + len(MODE_NAMES)) + (DATA_CHECKS if files else 0)
    rate = cfg.get("family_false_failure_rate")
    k_family = family_k(n_checks, float(rate)) if rate else 3.0
    k = float(cfg["pull_tolerance_sigma"]) if cfg.get("pull_tolerance_sigma") is not None else k_family
    k_weak = float(cfg["weak_mode_tolerance_sigma"]) if cfg.get("weak_mode_tolerance_sigma") is not None \
        else k_family
    figures: dict[str, float | str] = {"checks_in_family": float(n_checks), "k_pulls": k, "k_weak_modes": k_weak}
    if rate:
        figures["family_false_failure_rate"] = float(rate)
    reasons: list[str] = []
    truth_res = data_res = precision_res = None
    data_er = files[0][1] if files else first_exprun(requested_iov)
    data_run = (data_er.exp, data_er.run)
    firsts = [first for first, _v, _c in intervals]
    data_interval = max((f for f in firsts if f <= data_run), default=firsts[0])  # the one the file belongs to
    summary_path = Path(job_path) / "vxdcdc_alignment_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    frame_runs = [tuple(r) for r in summary.get("frame_runs", [])]
    tracks_by_sample = (summary.get("iterations") or [{}])[-1].get("tracks_by_sample")
    required = mode_requirements(cfg.get("max_weak_mode_error"))
    figures.update({f"max_error_{fam}": float(required[modes[0]]) for fam, modes in MODE_FAMILIES.items()
                    if all(required[m] == required[modes[0]] for m in modes)})

    def true_params(first):
        tv = truth_or_none(kwargs.get("reference_db"), "VXDAlignment", [*first, -1, -1])
        tc = truth_or_none(kwargs.get("reference_db"), "CDCAlignment", [*first, -1, -1])
        if tv is None or tc is None:
            return None
        true = np.zeros((geom.n_sensors, 6))
        true[geom.sensor_index(tv["sensor_id"])] = tv["params"]
        return true, np.asarray(tc["params"], float)

    for (first, vxd, cdc), has_truth in zip(intervals, with_truth):
        tag = "" if len(intervals) == 1 else f"e{first[0]}r{first[1]}_"
        where = "" if len(intervals) == 1 else f"interval from run {first[0]},{first[1]}: "
        idx = geom.sensor_index(vxd["sensor_id"])
        fitted = np.zeros((geom.n_sensors, 6))
        fitted[idx] = vxd["params"]
        err = np.full((geom.n_sensors, 6), np.nan)
        if "params_error" in vxd:
            err[idx] = vxd["params_error"]
        cdc_fit = np.asarray(cdc["params"], float)
        cdc_err = np.asarray(cdc["params_error"], float) if "params_error" in cdc else np.full_like(cdc_fit, np.nan)
        before = load_constants(chain_before, ExpRun(*first))
        cov = read_covariance(job_path, first)
        # the precision requirement: needs no truth (the errors of the mode amplitudes)
        prec = precision_checks(mode_errors(err, cdc_err, cov, geom), required, tracks_by_sample)
        figures.update({f"{tag}{key}": value for key, value in prec.figures.items()})
        reasons += [where + r for r in prec.reasons]
        precision_res = precision_res or prec  # the plot shows the first interval
        if has_truth:
            truth = true_params(first)
            if truth is None:
                reasons.append(f"{where}reference has VXDAlignment but no CDCAlignment for run {first[0]},{first[1]}")
                continue
            # the interval whose frame constraints hold this one (itself, or the latest frame interval before it)
            defining = max((r for r in frame_runs if r <= first), default=first)
            res = truth_checks(fitted, err, cdc_fit, cdc_err, truth[0], truth[1],
                               k=k, k_weak=k_weak, before=(before.vxd_params, before.cdc_params), cov=cov,
                               geom=geom, frame_sensors=np.asarray(vxd["frame_sensors"], bool)
                               if "frame_sensors" in vxd else None, min_pulls=int(cfg["min_pulls"]),
                               frame_motion_of=None if defining == first else true_params(defining))
            figures.update({f"{tag}{key}": value for key, value in res.figures.items()})
            reasons += [where + r for r in res.reasons]
            truth_res = truth_res or res  # the plot shows the first interval
        if files and first == data_interval:  # the data-only checks on the di-muon file, with the interval it belongs to
            raw = read_raw([files[0][0]])
            raw = first_events(raw, int(cfg["validation_tracks"]) // 2)
            after = copy.deepcopy(before)
            after.vxd_params = fitted
            after.cdc_params = cdc_fit
            cov_after = cov if cov is not None else (err ** 2).ravel()  # variances only (NaN: unknown, left out)
            data_res = data_checks(track_sample(raw, before), track_sample(raw, after), k=k, n_bins=n_bins,
                                   min_overlap_hits=int(cfg["min_overlap_hits"]), cov_after=cov_after)
            figures.update(data_res.figures)
            reasons += data_res.reasons
    figures["mode"] = "truth" if any(with_truth) else "data-only"
    if not any(with_truth):
        if not files:
            reasons.append("no truth and no di-muon file: nothing to validate")
    trend_figures, trend_plots, trend_reasons = trend_section(job_path)  # per-run trend, iterations (own module)
    figures.update(trend_figures)
    reasons += trend_reasons
    rows: dict[str, list] = {"quantity": list(figures), "value": list(figures.values())}
    plots = [save_figure(_plot(truth_res, data_res, n_bins, precision_res), "vxdcdc_alignment.png"),
             write_csv("vxdcdc_alignment.csv", rows)] + trend_plots
    note = "" if any(with_truth) else \
        " (no truth -- reference_global_tag absent: data-only checks only: overlap residuals, d0, chi2/ndf, " \
        "mode precision)"
    message = ("OK" if not reasons else "; ".join(reasons)) + note
    return Verdict(passed=not reasons, figures=figures, plots=plots, message=message)
