"""VXDCDCAlignment's input: a total cap spread over the runs beside basf2's per-file cap (issue 15)."""

from __future__ import annotations

import numpy as np


def _events(raws) -> dict[tuple[str, int], int]:
    return {(name, er[1]): int(raw["event"]["event"].size) for name, er, raw in raws}


def test_total_cap_spreads_over_the_runs_and_per_file_cap_still_works(bucket, script):
    cal = script("vxdcdc_alignment")
    inputs = {"mumu_tight_or_highm_calib": bucket.raw_entries("mumu_tight_or_highm_calib")}
    runs = sorted({er.run for _, er in inputs["mumu_tight_or_highm_calib"]})
    assert len(runs) >= 2
    per_file = cal.read_inputs(inputs, {"mumu_tight_or_highm_calib.max_processed_events_per_file": 20})
    assert set(_events(per_file).values()) == {20}
    # a total of (runs x 20): exactly the per-file sample, the same events (the first ones of every file)
    both = cal.read_inputs(inputs, {"mumu_tight_or_highm_calib.max_processed_events_per_file": 20,
                                    "mumu_tight_or_highm_calib.max_processed_events": 20 * len(per_file)})
    assert _events(both) == _events(per_file)
    for (_, _, a), (_, _, b) in zip(per_file, both):
        np.testing.assert_array_equal(a["cdc"]["tdc"], b["cdc"]["tdc"])
    # a smaller total: shared by all runs, every run represented
    total = cal.read_inputs(inputs, {"mumu_tight_or_highm_calib.max_processed_events_per_file": -1,
                                     "mumu_tight_or_highm_calib.max_processed_events": 3 * len(runs) + 1})
    counts = _events(total)
    assert sum(counts.values()) == 3 * len(runs) + 1
    assert sorted(r for _, r in counts) == runs and set(counts.values()) <= {3, 4}
    # the hits kept are those of the events kept
    assert all((raw[t]["gevent"] < raw["event"]["event"].size).all() for _, _, raw in total for t in ("cdc", "svd"))
