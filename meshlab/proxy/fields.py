"""Field validators shared by the sidecar's config readers (sans-IO).

:mod:`meshlab.proxy.config.sidecar` (``sidecar.json``) and :mod:`meshlab.proxy.config.policy` (its ``policies``
object) check every value with these. Each returns the value typed, or raises
:class:`~meshlab.errors.ConfigError` whose message starts with the dotted field path ``where``,
e.g. ``services[0].ports[0].port: expected an integer 1..65535, got 'x'``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from meshlab.errors import ConfigError


def join(where: str, key: str) -> str:
    """The dotted path of ``key`` inside ``where`` (``key`` alone at the root)."""
    return f"{where}.{key}" if where else key


def as_object(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where or '<root>'}: expected an object, got {type(value).__name__}")
    return value


def require(obj: Any, key: str, where: str) -> Any:
    """``obj[key]``; ``obj`` must be an object holding ``key``."""
    if key not in as_object(obj, where):
        raise ConfigError(f"{join(where, key)}: required field is missing")
    return obj[key]


def check_known(obj: dict[str, Any], keys: set[str] | frozenset[str], where: str) -> None:
    """Reject the first (sorted) key of ``obj`` not in ``keys``."""
    extra = sorted(set(obj) - set(keys))
    if extra:
        raise ConfigError(f"{join(where, extra[0])}: unknown field")


def as_list(value: Any, where: str) -> list[Any]:
    """``value`` if it is a JSON list."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def as_str(value: Any, where: str, *, allow_empty: bool = False) -> str:
    """A string (non-empty unless ``allow_empty``)."""
    if not isinstance(value, str) or (not allow_empty and not value):
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def as_int(value: Any, where: str, *, minimum: int = 0) -> int:
    """An integer >= ``minimum`` (booleans are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def as_port(value: Any, where: str) -> int:
    """A TCP port 1..65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: expected an integer 1..65535, got {value!r}")
    return value


def as_num(value: Any, where: str, *, minimum: float = 0.0,
           maximum: float | None = None) -> float:
    """A number in ``minimum..maximum`` (no upper bound when ``maximum`` is None), as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{where}: expected a number {bound}, got {value!r}")
    return float(value)


def as_choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def as_ipv4(value: Any, where: str) -> str:
    """A dotted IPv4 address string."""
    text = as_str(value, where)
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(f"{where}: expected an IPv4 address, got {text!r}") from None
    return text
