"""The sidecar's DNS proxy server: ``127.0.0.1:15053``, UDP and TCP, as Istio's agent runs it
when ``ISTIO_META_DNS_CAPTURE`` is ``"true"`` (``pkg/dns/client/dns.go``: a UDP and a TCP
server on ``localhost:15053``, the capture rules send the pod's port-53 traffic there).

A query is answered from the :class:`~meshlab.proxy.dns.table.NameTable` when its name is in
it: A records of the ClusterIP (TTL 30 s, as Istio's table answers), an empty NOERROR answer
for AAAA (the lab's Services are IPv4 only), a CNAME first for a search-path expansion. Any other
query is forwarded unchanged to the nameservers of the pod's ``/etc/resolv.conf`` (kube-dns),
over the transport it came on, one after another until one answers within
:data:`UPSTREAM_TIMEOUT_S`; when none does, the app gets SERVFAIL. The forward leaves from the
sidecar's uid 1337, which the capture rules exempt, so it reaches kube-dns itself.

It runs on the sidecar main process's event loop (never in the HTTP workers) and only when DNS
capture is on; binding happens before the process drops to uid 1337.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from meshlab.proxy.config.sidecar import SidecarConfig
from meshlab.proxy.dns.table import NameTable

ADDRESS = "127.0.0.1"
PORT = 15053
TTL_S = 30
UPSTREAM_TIMEOUT_S = 5.0
RESOLV_CONF = Path("/etc/resolv.conf")


def nameservers(path: Path = RESOLV_CONF) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order (empty when unreadable)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [parts[1] for parts in (line.split() for line in lines)
            if len(parts) >= 2 and parts[0] == "nameserver"]


def local_answer(table: NameTable, query: dns.message.Message) -> dns.message.Message | None:
    """The response to ``query`` from the table, or None when it must be forwarded (a name not
    in the table, a class other than IN, a type other than A/AAAA, or not one question)."""
    if len(query.question) != 1 or query.opcode() != 0:
        return None
    q = query.question[0]
    if q.rdclass != dns.rdataclass.IN or q.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return None
    hit = table.lookup(q.name.to_text())
    if hit is None:
        return None
    resp = dns.message.make_response(query)
    resp.flags |= dns.flags.AA | dns.flags.RA
    owner = q.name
    if hit.cname:
        resp.answer.append(dns.rrset.from_text(q.name, TTL_S, "IN", "CNAME", hit.canonical))
        owner = dns.name.from_text(hit.canonical)
    if q.rdtype == dns.rdatatype.A:
        resp.answer.append(dns.rrset.from_text(owner, TTL_S, "IN", "A", *hit.addresses))
    return resp


class DnsProxy:
    """The DNS proxy of one sidecar.

    Args:
        config: the sidecar config (its Services make the name table).
        upstreams: nameserver addresses to forward to (default: the pod's resolv.conf).
        address: listen address. port: listen port (UDP and TCP).
        timeout_s: how long one upstream may take to answer a forwarded query.
    """

    def __init__(self, config: SidecarConfig, upstreams: list[str] | None = None, *,
                 address: str = ADDRESS, port: int = PORT,
                 timeout_s: float = UPSTREAM_TIMEOUT_S) -> None:
        self.table = NameTable(config)
        self.upstreams = nameservers() if upstreams is None else list(upstreams)
        self.address, self.port, self.timeout_s = address, port, timeout_s
        self.counts = {"local": 0, "forwarded": 0, "upstream_failed": 0}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return (f"DnsProxy({self.address}:{self.port}, table={self.table!r}, "
                f"upstreams={self.upstreams}, counts={self.counts})")

    async def start(self) -> None:
        """Bind UDP and TCP ``address:port``.

        Raises:
            OSError: a port cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpServer(self), local_addr=(self.address, self.port))
        self._tcp = await asyncio.start_server(self._serve_tcp, self.address, self.port)

    def reload(self, config: SidecarConfig) -> None:
        """Rebuild the name table from a pushed config."""
        self.table = NameTable(config)

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()

    async def resolve(self, wire: bytes, tcp: bool) -> bytes | None:
        """The response bytes for one query (None: unparseable, dropped)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        resp = local_answer(self.table, query)
        if resp is not None:
            self.counts["local"] += 1
            return resp.to_wire()
        self.counts["forwarded"] += 1
        ask = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
        for server in self.upstreams:
            with contextlib.suppress(dns.exception.DNSException, OSError):
                return (await ask(query, server, timeout=self.timeout_s)).to_wire()
        self.counts["upstream_failed"] += 1
        fail = dns.message.make_response(query)
        fail.set_rcode(dns.rcode.SERVFAIL)
        return fail.to_wire()

    def spawn(self, coro: object) -> None:
        """Run ``coro`` as a task kept until it ends."""
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        await serve_stream(reader, writer, lambda wire: self.resolve(wire, tcp=True))


async def serve_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       answer: Callable[[bytes], Awaitable[bytes | None]], *,
                       hold_on_none: bool = False) -> None:
    """Serve DNS over one TCP connection (RFC 1035 §4.2.2: each message after its 2-byte
    length) until the client closes it; ``answer`` gives each response (None: none — the
    connection is closed, or with ``hold_on_none`` held open and silent until the client
    gives up, which is what a timeout looks like)."""
    try:
        while True:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            out = await answer(await reader.readexactly(size))
            if out is None:
                if hold_on_none:
                    await reader.read()
                break
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.proxy.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        out = await self.proxy.resolve(data, tcp=False)
        if out is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)
