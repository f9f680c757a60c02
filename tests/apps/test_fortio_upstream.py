"""The multi-server's upstream pool against a scripted raw TCP server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest

from meshlab.apps.fortio_upstream import Destination, UpstreamError, UpstreamPool
from meshlab.errors import ConfigError

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
WAIT_S = 10.0


async def _flaky_server(answers_on_first_connection: int) -> tuple[asyncio.Server, list[int]]:
    """First connection answers N requests then drops the next one unanswered; others answer."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(connections)
        connections.append(index)
        served = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if index == 0 and served == answers_on_first_connection:
                    break  # keep-alive race: the reused connection dies before replying
                writer.write(OK)
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), connections


async def _two_requests(method: str) -> tuple[list[object], int]:
    server, connections = await _flaky_server(answers_on_first_connection=1)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(timeout_s=WAIT_S)
    target = Destination.parse(f"http://127.0.0.1:{port}")
    results: list[object] = []
    try:
        for _ in range(2):
            try:
                results.append(await pool.request(target, method, "/x", [], b""))
            except UpstreamError as err:
                results.append(err)
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
    return results, len(connections)


def test_idempotent_request_is_retried_on_a_fresh_connection() -> None:
    results, connections = asyncio.run(asyncio.wait_for(_two_requests("GET"), WAIT_S))
    assert [getattr(r, "status", None) for r in results] == [200, 200]
    assert connections == 2


def test_post_on_dead_reused_connection_is_an_eof_error() -> None:
    results, connections = asyncio.run(asyncio.wait_for(_two_requests("POST"), WAIT_S))
    assert getattr(results[0], "status", None) == 200
    assert isinstance(results[1], UpstreamError)
    assert str(results[1]).endswith('/x": EOF')
    assert str(results[1]).startswith('Post "http://127.0.0.1:')
    assert connections == 1


def test_target_parsing() -> None:
    target = Destination.parse("fortio-server-l2:8080/")
    assert (target.base_url, target.host, target.port, target.authority) == (
        "http://fortio-server-l2:8080", "fortio-server-l2", 8080, "fortio-server-l2:8080")
    assert Destination.parse("http://h/pre").url_for("/echo?x") == "http://h/pre/echo?x"
    assert Destination.parse("http://h").port == 80
    with pytest.raises(ConfigError):
        Destination.parse("https://h")
    with pytest.raises(ConfigError):
        Destination.parse("http://h:notaport")
