"""Istio's protocol selection for a port (sans-IO): shared by the manifest model and the
sidecar config, and kept here so the sidecar does not import the lab's manifest model."""

from __future__ import annotations


def protocol_for_port(name: str, app_protocol: str | None = None) -> str:
    """Return the mesh protocol of a Service/container port the way Istio selects it.

    Istio uses ``appProtocol`` first, then the port-name prefix (``http``/``http2``/``grpc``/
    ``tcp`` before an optional ``-suffix``); anything else is treated as TCP here (Istio would
    sniff it; meshlab does not sniff). Source: Istio "Protocol Selection" docs.

    Args:
        name: the port name, e.g. ``http-m``.
        app_protocol: the port's ``appProtocol``, if set.

    Returns:
        One of ``"http"``, ``"grpc"``, ``"tcp"``. ``http2`` ports count as ``"http"``:
        meshlab's sidecar proxies them as HTTP/1.1 (no h2c yet).
    """
    candidate = (app_protocol or name or "").lower()
    prefix = candidate.split("-", 1)[0]
    if prefix in ("http", "http2"):
        return "http"
    if prefix == "grpc":
        return "grpc"
    return "tcp"
