"""meshlab's faults: one module per fault, each registered by name (:mod:`meshlab.faults.base`).

Importing the package imports every fault module, so :data:`~meshlab.faults.base.REGISTRY` is
complete for ``create(name, ...)``, the deadman and the chaostoolkit actions.
"""

import importlib
import pkgutil

_INFRA = {"base", "ledger", "deadman"}

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _INFRA and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
