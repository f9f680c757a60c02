"""meshlab's Chaos Toolkit extension: run meshlab faults, loads and probes from ``chaos run``.

- :mod:`~meshlab.chaostoolkit.actions`: ``inject_fault`` / ``revert_fault`` (any registered
  fault, ledger + deadman backed), ``start_load`` / ``stop_load`` (Locust in the client pod).
- :mod:`~meshlab.chaostoolkit.probes`: ``tps``, ``latency_percentile_ms``,
  ``response_flag_count``, ``tcp_stats_value``, ``socket_state_count`` — numbers for
  steady-state tolerances.
- :mod:`~meshlab.chaostoolkit.control`: one meshlab run journal/report per experiment and a
  rollback safety net.
- ``experiments/*.json``: the field scenarios of DESIGN.md §5 (node power-off, packet drop,
  half-close, conntrack expiry); see ``README.md`` beside this file.
"""

from pathlib import Path

#: Folder of the shipped experiments.
EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"
