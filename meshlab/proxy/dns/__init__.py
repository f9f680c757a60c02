"""The sidecar's DNS proxy (Istio's agent DNS proxying, ``ISTIO_META_DNS_CAPTURE``): the name
table built from the sidecar's Services (:mod:`.table`) and the UDP/TCP server on
``127.0.0.1:15053`` that answers from it and forwards the rest to the pod's nameservers
(:mod:`.server`). docs/SIDECAR.md "DNS proxying"."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from meshlab.proxy.config.sidecar import SidecarConfig
    from meshlab.proxy.dns.server import DnsProxy


async def start_if_enabled(config: SidecarConfig) -> DnsProxy | None:
    """Start the DNS proxy when ``config.dns_capture`` is on; else None, with nothing bound
    and dnspython not even imported (a sidecar without DNS capture pays nothing for it).

    Raises:
        OSError: 127.0.0.1:15053 cannot be bound.
    """
    if not config.dns_capture:
        return None
    from meshlab.proxy.dns.server import DnsProxy

    proxy = DnsProxy(config)
    await proxy.start()
    return proxy
