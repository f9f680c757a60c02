"""Envoy's worker model for the embedded sidecar: ``concurrency`` worker processes behind one main.

:mod:`meshlab.proxy.cells` (state every worker shares: circuit-breaker counts and outlier
detection),
:mod:`.channel` (main ↔ worker control messages), :mod:`.snapshot` (stats deltas and histogram
intervals, merged by the main), :mod:`.worker` (one worker process) and :mod:`.supervisor` (the
main process: binds, forks, owns admin and flush, merges). See docs/SIDECAR.md "Worker model".
"""
