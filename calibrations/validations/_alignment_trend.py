"""The per-run-trend section of the VXDCDCAlignment validation (time dependence, automatic boundaries, iterations).

Reads ``vxdcdc_alignment_summary.json`` that :func:`calibrations.vxdcdc_alignment.calibrate` leaves in the job
directory.  Data-only (no truth needed): a part whose per-run position jumps by more than the configured
threshold while it has ONE set of parameters across that run fails the validation (its payload is wrong for
the runs on one side), naming the part, the run and the ``expert_config`` keys that fix it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY_FILE = "vxdcdc_alignment_summary.json"


def trend_section(job_path: "str | os.PathLike[str]", plot_name: str = "vxdcdc_alignment_trend.png"
                  ) -> tuple[dict[str, float | str], list[str], list[str]]:
    """(figures, plots, failure reasons) of the per-run trend and the iterations; nothing without a summary."""
    from calibrations._common import pyplot, save_figure

    path = Path(job_path) / SUMMARY_FILE
    if not path.is_file():
        return {}, [], []
    summary: dict[str, Any] = json.loads(path.read_text())
    figures: dict[str, float | str] = {}
    reasons: list[str] = []
    its = summary.get("iterations") or []
    figures["iterations"] = float(len(its))
    figures["iterations_converged"] = "yes" if summary.get("converged") else "no"
    if its:
        figures["last_iteration_max_pull"] = float(its[-1]["max_pull"])
        figures["last_iteration_max_shift_um"] = float(its[-1]["max_shift_um"])
    timedep = summary.get("timedep") or []
    figures["timedep"] = "; ".join(f"{t['part']} from " + ", ".join(f"{e},{r}" for e, r in t["boundaries"])
                                   for t in timedep) or "none"
    proposed = summary.get("proposed_boundaries") or []
    figures["auto_boundaries"] = str(summary.get("auto_boundaries", "off"))
    figures["auto_boundaries_proposed"] = ", ".join(f"{b['part']}@{b['exp']},{b['run']}" for b in proposed) or "none"
    modelled = {(t["part"], e, r) for t in timedep for e, r in t["boundaries"]}
    for b in proposed:
        if (b["part"], b["exp"], b["run"]) not in modelled:
            reasons.append(f"{b['part']} jumps by {b['jump_um']:.1f} um ({b['significance']:.1f} sigma) at run "
                           f"{b['exp']},{b['run']} but has one set of parameters across it (expert_config "
                           f"'timedep' or 'auto_boundaries': 'apply')")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    trend = summary.get("trend") or {}
    runs = [r for _, r in trend.get("runs", [])]
    for part, tr in (trend.get("parts") or {}).items():
        v, e = np.array(tr["shift_um"], float), np.array(tr["error_um"], float)
        for j, axis in enumerate("xyz"):
            if np.isfinite(v[:, j]).any():
                axes[0].errorbar(np.array(runs) + 0.05 * j, v[:, j], yerr=e[:, j], fmt="o", ms=3,
                                 label=f"{part} d{axis}")
    for b in proposed:
        axes[0].axvline(b["run"] - 0.5, color="r", ls="--", lw=0.8)
    axes[0].set_xlabel("run")
    axes[0].set_ylabel(f"translation relative to {trend.get('reference', '?')} after alignment [um]")
    axes[0].set_title("per-run trend (dashed: proposed boundaries)")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=6)
    if its:
        n = [it["iteration"] for it in its]
        axes[1].semilogy(range(1, len(n) + 1), [max(it["max_pull"], 1e-3) for it in its], "o-", label="max |corr|/error")
        axes[1].semilogy(range(1, len(n) + 1), [max(it["max_shift_um"], 1e-3) for it in its], "s-",
                         label="max |shift| [um]")
        axes[1].set_xlabel("iteration (a refit after applying boundaries continues the count)")
        axes[1].legend(fontsize=7)
    axes[1].set_title("per-iteration change")
    return figures, [save_figure(fig, plot_name)], reasons
