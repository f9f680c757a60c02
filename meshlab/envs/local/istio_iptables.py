"""The istio-iptables REDIRECT rule set for a meshed pod, as ``iptables-restore`` input.

Mirrors what ``istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*'
-d 15090,15021,15020`` installs (ENVOY.md §6, from Istio's ``tools/istio-iptables`` golden files):
inbound TCP is redirected to 15006 except the excluded ports, outbound TCP to 15001 except
traffic of uid/gid 1337 (the proxy), loopback to 127.0.0.1, and the inbound passthrough source
127.0.0.6. The same text is applied by ``iptables-restore --noflush`` in the pod's netns.

With DNS capture (``ISTIO_META_DNS_CAPTURE: "true"``, istio-iptables ``--redirect-dns`` with
the pod's resolv.conf nameservers, :attr:`CaptureConfig.dns_servers`), queries to those
nameservers go to the agent's DNS proxy on 15053, as Istio's rules do: UDP by three rules in
``OUTPUT`` (the proxy's own uid/gid RETURN first, then ``-d <ns> --dport 53 REDIRECT``), TCP by
a rule in ``ISTIO_OUTPUT`` placed after the uid/gid 1337 RETURNs and before the catch-all
redirect to 15001. Istio also splits the proxy's and the app's DNS conntrack entries into zones
in the raw table; the lab does not (its forwards use random source ports).
"""

from __future__ import annotations

from dataclasses import dataclass

PROXY_UID = 1337
PROXY_GID = 1337
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
INBOUND_PASSTHROUGH_SRC = "127.0.0.6"
DEFAULT_EXCLUDED_INBOUND = (15090, 15021, 15020)
HBONE_PORT = 15008
DNS_PORT = 53
DNS_PROXY_PORT = 15053
ISTIO_CHAINS = ("ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT")


@dataclass(frozen=True)
class CaptureConfig:
    """istio-iptables options that matter in the lab.

    Attributes:
        proxy_uid: uid whose traffic is not captured (``-u``).
        proxy_gid: gid whose traffic is not captured (``-g``).
        outbound_port: ``-p`` (Envoy ``virtualOutbound``).
        inbound_port: ``-z`` (Envoy ``virtualInbound``).
        excluded_inbound_ports: ``-d``; the status port is appended by Istio's injector.
        dns_servers: nameservers whose port-53 traffic goes to the DNS proxy (15053); empty:
            no DNS capture.
    """

    proxy_uid: int = PROXY_UID
    proxy_gid: int = PROXY_GID
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT
    excluded_inbound_ports: tuple[int, ...] = DEFAULT_EXCLUDED_INBOUND
    dns_servers: tuple[str, ...] = ()


def capture_rules(cfg: CaptureConfig = CaptureConfig()) -> str:
    """``iptables-restore`` text for the nat table of a meshed pod.

    Args:
        cfg: capture options (Istio defaults when omitted).

    Returns:
        Text starting with ``*nat`` and ending with ``COMMIT``, to be applied with
        ``iptables-restore --noflush``.
    """
    uid, gid = cfg.proxy_uid, cfg.proxy_gid
    lines = ["*nat"] + [f":{c} - [0:0]" for c in ISTIO_CHAINS]
    lines += [f"-A ISTIO_INBOUND -p tcp --dport {HBONE_PORT} -j RETURN"]
    lines += [f"-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN" for p in cfg.excluded_inbound_ports]
    lines += [
        f"-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {cfg.outbound_port}",
        f"-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {cfg.inbound_port}",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A OUTPUT -j ISTIO_OUTPUT",
        f"-A ISTIO_OUTPUT -s {INBOUND_PASSTHROUGH_SRC}/32 -o lo -j RETURN",
    ]
    for match in (f"--uid-owner {uid}", f"--gid-owner {gid}"):
        lines += [
            (f"-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport {HBONE_PORT} "
            f"-m owner {match} -j ISTIO_IN_REDIRECT"),
            f"-A ISTIO_OUTPUT -o lo -m owner ! {match} -j RETURN",
            f"-A ISTIO_OUTPUT -m owner {match} -j RETURN",
        ]
    lines += [f"-A ISTIO_OUTPUT -d {ns}/32 -p tcp -m tcp --dport {DNS_PORT} "
              f"-j REDIRECT --to-ports {DNS_PROXY_PORT}" for ns in cfg.dns_servers]
    lines += ["-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"]
    if cfg.dns_servers:
        lines += [f"-A OUTPUT -p udp -m udp --dport {DNS_PORT} -m owner {m} -j RETURN"
                  for m in (f"--uid-owner {uid}", f"--gid-owner {gid}")]
        lines += [f"-A OUTPUT -d {ns}/32 -p udp -m udp --dport {DNS_PORT} "
                  f"-j REDIRECT --to-ports {DNS_PROXY_PORT}" for ns in cfg.dns_servers]
    lines += ["COMMIT", ""]
    return "\n".join(lines)
