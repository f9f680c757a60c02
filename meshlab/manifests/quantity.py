"""Kubernetes resource quantities (``resources.limits.cpu: 500m``, ``memory: 128Mi``) as the lab
uses them: CPU in millicores, memory in bytes.

The grammar follows Kubernetes' ``resource.Quantity`` (k8s.io/apimachinery
``pkg/api/resource/quantity.go``): a decimal number with an optional suffix — binary ``Ki Mi Gi
Ti Pi Ei``, decimal ``n u m k M G T P E``, or an exponent ``e3``/``E3``. Kubernetes rounds a CPU
quantity up to whole millicores (kept here); a limit below ``1m`` is refused here, where the
lab could not enforce it.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|"
                       r"[eE]([+-]?\d+))?$")
_BINARY = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50,
           "Ei": 2 ** 60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}


def quantity(value: object) -> Decimal:
    """A quantity (``"500m"``, ``"128Mi"``, ``"1e3"``, ``2``, ``0.5``) as an exact decimal.

    Raises:
        ValueError: not a quantity, or negative (the message quotes the value).
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(  # noqa: TRY004 - a user's value: one error type for every bad one
            f"expected a quantity such as 500m or 128Mi, got {value!r}")
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"expected a quantity such as 500m or 128Mi, got {value!r}")
    number, suffix, exponent = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"not a number: {value!r}") from exc
    if exponent is not None:
        amount = amount.scaleb(int(exponent))
    elif suffix in _BINARY:
        amount *= _BINARY[suffix]
    else:
        amount *= _DECIMAL[suffix or ""]
    if amount < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return amount


def cpu_millicores(value: object) -> int:
    """A CPU quantity in millicores, rounded up (``"100m"`` → 100, ``"0.5"`` → 500, ``1`` →
    1000).

    Raises:
        ValueError: not a quantity, or below ``1m`` (Kubernetes' smallest CPU unit).
    """
    millicores = quantity(value) * 1000
    if millicores < 1:
        raise ValueError(f"must be at least 1m, got {value!r}")
    return math.ceil(millicores)


def memory_bytes(value: object) -> int:
    """A memory quantity in bytes, rounded up (``"128Mi"`` → 134217728, ``"1G"`` → 10^9).

    Raises:
        ValueError: not a quantity, or zero.
    """
    amount = math.ceil(quantity(value))
    if amount < 1:
        raise ValueError(f"must be at least 1 byte, got {value!r}")
    return amount
