"""Field readers shared by the Istio kinds (:mod:`meshlab.manifests.istio_resources`): Istio/Go
durations, host names resolved Istio's way, integers and keepalive blocks. Each reader fails with
the document's ``<file>: <Kind>/<name>.<field>: <problem>`` :class:`~meshlab.errors.ManifestError`.
"""

from __future__ import annotations

import re
from typing import Any

from meshlab.manifests.document import Document
from meshlab.proxy.config.policy import TcpKeepalive

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def parse_duration_s(text: Any) -> float:
    """Seconds of an Istio/Go duration string (``"1.5s"``, ``"100ms"``, ``"1h30m"``, ``"0"``).

    Raises:
        ValueError: not a string, negative, or not in that syntax.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a duration like \"1.5s\" or \"100ms\", got {text!r}")
    s = text.strip()
    if s == "0":
        return 0.0
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r} (use e.g. \"1.5s\", \"100ms\", \"1h\")")
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total


def resolve_host(host: str, namespace: str, domain: str) -> str:
    """Istio's short-name rule: a name without a dot lives in ``namespace``.

    Raises:
        ValueError: not a DNS name, or a wildcard (not supported by meshlab).
    """
    if not isinstance(host, str) or not host:
        raise ValueError(f"expected a host name, got {host!r}")
    if "*" in host:
        raise ValueError(f"wildcard host {host!r} is not supported (name one Service)")
    if not _HOST.fullmatch(host):
        raise ValueError(f"{host!r} is not a valid DNS host name")
    return host if "." in host else f"{host}.{namespace}.svc.{domain}"


def read_int(doc: Document, field: str, value: Any, lo: int = 0, hi: int = 2**32 - 1) -> int:
    """An integer in ``lo..hi`` (a digit string too: protobuf JSON writes int64 as strings).

    Raises:
        ManifestError: anything else.
    """
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)  # int64 fields may be JSON strings (protobuf JSON mapping)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise doc.fail(field, f"expected an integer {lo}..{hi}, got {value!r}")
    return value


def read_duration(doc: Document, field: str, value: Any, *, min_s: float = 0.001) -> float:
    """Seconds of a duration field, at least ``min_s`` (Istio validates most at >= 1 ms).

    Raises:
        ManifestError: bad syntax or below ``min_s``.
    """
    try:
        seconds = parse_duration_s(value)
    except ValueError as exc:
        raise doc.fail(field, str(exc)) from None
    if seconds < min_s:
        raise doc.fail(field, f"must be at least {min_s * 1000:g}ms, got {value!r}")
    return seconds


def opt(node: dict[str, Any] | None, key: str) -> Any:
    """``node[key]`` or None, also when ``node`` itself is None."""
    return (node or {}).get(key)


def read_host(doc: Document, field: str, value: Any, namespace: str, domain: str) -> str:
    """:func:`resolve_host`, failing as a ManifestError on ``field``."""
    try:
        return resolve_host(value, namespace, domain)
    except ValueError as exc:
        raise doc.fail(field, str(exc)) from None


def read_keepalive(doc: Document, where: str, node: dict[str, Any], keys: tuple[str, str, str],
                   durations: bool) -> TcpKeepalive:
    """Keepalive from DR (``probes``/``time``/``interval`` durations) or Envoy (seconds)."""
    vals: list[int | None] = []
    for i, key in enumerate(keys):
        v = node.get(key)
        if v is None:
            vals.append(None)
        elif i == 0 or not durations:
            vals.append(read_int(doc, f"{where}.{key}", v, 1 if i else 0) or None)
        else:  # Istio hands Envoy whole seconds (Duration.Seconds)
            vals.append(int(read_duration(doc, f"{where}.{key}", v, min_s=1.0)))
    return TcpKeepalive(*vals)
