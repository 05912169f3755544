"""b2luca: prompt-calibration orchestrator."""

__version__ = "0.1.0"
