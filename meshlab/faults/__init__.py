"""meshlab's faults: one module per fault, named after its registry key.

:mod:`.protocol` (what a fault is), :mod:`.registry` (every fault by key, ``create``),
:mod:`.ledger` and :mod:`.deadman` (an active fault is always recorded and reverted),
:mod:`.base` (``start``/``stop``/``active``: inject and revert under the ledger).
"""
