"""Toy Belle II-like detector simulation (see b2luca/sim/README.md).

Entry point: :func:`simulate_bucket`.  Geometry, helix maths and the raw format live in
:mod:`b2luca.reco` (shared with reconstruction); truth and payload definitions in :mod:`.truth`.
"""

from .simulate import DATA_TAGS, SimulationSummary, simulate_bucket, simulate_sample
from .truth import Truth, make_truth

__all__ = ["DATA_TAGS", "SimulationSummary", "Truth", "make_truth", "simulate_bucket", "simulate_sample"]
