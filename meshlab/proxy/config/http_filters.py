"""HTTP filters an EnvoyFilter inserts into a capture listener's HTTP chain (sans-IO).

meshlab supports the one filter an Istio user adds to cap request size: Envoy's buffer filter
(``envoy.filters.http.buffer``, ``envoy.extensions.filters.http.buffer.v3.Buffer``). It holds
the whole request body before the router runs, and when the body grows past
``max_request_bytes`` the connection manager answers ``413 Payload Too Large`` (details
``request_payload_too_large``, no response flag), counts ``downstream_rq_too_large`` and, the
request not being complete on an HTTP/1 connection, closes the connection after the reply
(Envoy ``FilterManager`` ``requestDataTooLarge``; ``ConnectionManagerImpl`` drain on a response
before the request completed; Envoy FAQ "Why is Envoy sending 413s?"). Without the filter
Envoy streams bodies and never sends 413, and neither does the sidecar.

``sidecar.json`` shape, under ``policies.listeners["15001"|"15006"]``::

    "http_filters": [{"name": "envoy.filters.http.buffer",
                      "max_request_bytes": 1024,       # > 0
                      "port": 8080}]                   # EnvoyFilter match.listener.portNumber;
                                                       # null = every HTTP port of the listener

For ``15001`` (``SIDECAR_OUTBOUND``) the port is the Service port, for ``15006``
(``SIDECAR_INBOUND``) the inbound (container) port, as Istio matches ``portNumber``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshlab.errors import ConfigError
from meshlab.proxy.fields import as_int, as_list, as_object, as_port, check_known

#: The filter's name in an EnvoyFilter ``patch.value.name``.
BUFFER_FILTER = "envoy.filters.http.buffer"
#: Its ``typed_config`` type URL.
BUFFER_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"


@dataclass(frozen=True)
class BufferFilter:
    """One buffer filter on a capture listener.

    Attributes:
        max_request_bytes: request body bytes the filter holds; one more byte answers 413.
        port: the HTTP port it applies to (Service port outbound, container port inbound);
            None = every port.
    """

    max_request_bytes: int
    port: int | None = None

    def applies_to(self, port: int) -> bool:
        """Whether requests to ``port`` pass through this filter."""
        return self.port is None or self.port == port


def parse_http_filters(value: Any, where: str) -> tuple[BufferFilter, ...]:
    """Validate a listener's ``http_filters`` list (shape in the module docstring).

    Raises:
        ConfigError: not a list, an unknown filter name or key, a limit < 1, a bad port; the
            message names the dotted field, e.g. ``….http_filters[0].max_request_bytes``.
    """
    out = []
    for i, item in enumerate(as_list(value, where)):
        w = f"{where}[{i}]"
        o = as_object(item, w)
        check_known(o, {"name", "max_request_bytes", "port"}, w)
        if o.get("name") != BUFFER_FILTER:
            raise ConfigError(f"{w}.name: only {BUFFER_FILTER} is supported, "
                              f"got {o.get('name')!r}")
        if "max_request_bytes" not in o:
            raise ConfigError(f"{w}.max_request_bytes: missing required field")
        limit = as_int(o["max_request_bytes"], f"{w}.max_request_bytes", minimum=1)
        port = None if o.get("port") is None else as_port(o["port"], f"{w}.port")
        out.append(BufferFilter(limit, port))
    return tuple(out)


def max_request_bytes(filters: tuple[BufferFilter, ...], port: int) -> int | None:
    """The request body limit for ``port`` (the smallest of the filters that apply: each one
    buffers and checks), or None when no buffer filter applies (bodies stream, no 413)."""
    limits = [f.max_request_bytes for f in filters if f.applies_to(port)]
    return min(limits) if limits else None
