"""The dns-error fault front: a small DNS server in front of the lab's dnsmasq, for a fault's
duration (``python -m meshlab.envs.local.dns_front --config front.json``).

dnsmasq cannot fail a share of queries, so the fault puts this in front of it, in the DNS
host's netns (:mod:`meshlab.envs.local.dns_fault` redirects port 53 there to
:data:`FRONT_PORT`). Every query is logged as ``query[<type>] <name> from <ip>`` to
``front.log`` (the per-pod counts, :func:`meshlab.envs.local.kube_dns.query_counts`). A query
whose name matches one of the fault's glob ``patterns`` (Chaos Mesh DNSChaos ``patterns``:
``*`` and ``?`` wildcards over the whole name, case-insensitive, no trailing dot) gets, with
probability ``percent`` / 100, the fault's action: ``nxdomain`` or ``servfail`` (a response
with that rcode) or ``timeout`` (no response at all). Every other query is relayed to dnsmasq
over the transport it came on, and its answer relayed back.

Config (JSON): ``{"listen_port", "upstream", "patterns": [...], "action", "percent", "log"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import json
import random
import sys
from collections.abc import Sequence
from typing import IO, Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from meshlab.proxy.dns.server import serve_stream

FRONT_PORT = 5353
ACTIONS = ("nxdomain", "servfail", "timeout")
RELAY_TIMEOUT_S = 5.0


def matches(patterns: Sequence[str], qname: str) -> bool:
    """Whether ``qname`` (any case, with or without its trailing dot) matches a glob."""
    name = qname.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(name, p.lower().rstrip(".")) for p in patterns)


class Front:
    """The front's decisions and relay.

    Args:
        cfg: the config (see the module docstring).
        log: where query lines go (flushed per line).
        rng: the random source of the ``percent`` rolls.
    """

    def __init__(self, cfg: dict[str, Any], log: IO[str], rng: random.Random | None = None):
        self.patterns = list(cfg["patterns"])
        self.action = cfg["action"]
        self.percent = float(cfg["percent"])
        self.upstream = cfg["upstream"]
        self.log = log
        self.rng = rng or random.Random()

    async def handle(self, wire: bytes, source: str, tcp: bool) -> bytes | None:
        """The response bytes for one query; None: no response (timeout action, or junk)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        q = query.question[0] if query.question else None
        if q is not None:
            self.log.write(f"query[{dns.rdatatype.to_text(q.rdtype)}] "
                           f"{q.name.to_text(omit_final_dot=True)} from {source}\n")
            self.log.flush()
            if matches(self.patterns, q.name.to_text()) and \
                    self.rng.random() * 100 < self.percent:
                if self.action == "timeout":
                    return None
                resp = dns.message.make_response(query)
                resp.set_rcode(dns.rcode.NXDOMAIN if self.action == "nxdomain"
                               else dns.rcode.SERVFAIL)
                return resp.to_wire()
        ask = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
        with contextlib.suppress(dns.exception.DNSException, OSError):
            return (await ask(query, self.upstream, timeout=RELAY_TIMEOUT_S)).to_wire()
        return None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        task = asyncio.ensure_future(self._reply(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        out = await self.front.handle(data, addr[0], tcp=False)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def _tcp(front: Front, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    source = writer.get_extra_info("peername")[0]
    await serve_stream(reader, writer, lambda wire: front.handle(wire, source, tcp=True),
                       hold_on_none=True)  # a timeout: silent until the client gives up


async def serve(cfg: dict[str, Any], log: IO[str]) -> None:
    """Serve UDP and TCP on ``0.0.0.0:<listen_port>`` until killed, logging to ``log``."""
    front = Front(cfg, log)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: _Udp(front),
                                        local_addr=("0.0.0.0", cfg["listen_port"]))
    server = await asyncio.start_server(lambda r, w: _tcp(front, r, w), "0.0.0.0",
                                        cfg["listen_port"])
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (exit 2 on a bad config)."""
    parser = argparse.ArgumentParser(prog="python -m meshlab.envs.local.dns_front")
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as fh:
            cfg = json.load(fh)
        if cfg["action"] not in ACTIONS:
            raise ValueError(f"action: expected one of {ACTIONS}, got {cfg['action']!r}")
    except (OSError, ValueError, KeyError) as exc:
        print(f"dns_front: bad config: {exc}", file=sys.stderr)
        return 2
    with open(cfg["log"], "a", encoding="utf-8") as log:
        asyncio.run(serve(cfg, log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
