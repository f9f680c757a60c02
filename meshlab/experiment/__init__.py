"""Experiments: a :class:`Run` (loads, faults, checks, journal), its lifecycle
(:mod:`~meshlab.experiment.lifecycle`) and the labs it runs on (:mod:`~meshlab.experiment.labs`).
"""

from meshlab.experiment.run import ACCESS_LOG_SAMPLE, DEFAULT_CLIENT, DELIVERING, Run

__all__ = ["ACCESS_LOG_SAMPLE", "DEFAULT_CLIENT", "DELIVERING", "Run"]
