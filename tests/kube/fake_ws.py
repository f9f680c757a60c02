"""The HTTP side of the in-test API server (:mod:`kube_fake_server`): JSON requests, and exec
and port-forward over a minimal WebSocket (RFC 6455) with the ``channel.k8s.io`` framing.

What the client sees, as from a real API server and kubelet:

- An exec or port-forward the API server refuses (RBAC, no such pod, ``container x is not
  valid for pod y``, no node) is answered *before* the upgrade: an HTTP error with a Failure
  ``Status`` body (:meth:`FakeKube.connect`).
- The subprotocol is the first one the client offers that the server supports
  (``wsstream``'s handshake): ``v5.channel.k8s.io`` or ``v4.channel.k8s.io`` for exec
  (:attr:`FakeKube.exec_protocols`; a cluster before 1.30 has no v5), ``v4.channel.k8s.io``
  for port-forward; none in common is ``403 Forbidden`` with no body.
- Exec: stdin (channel 0) is read until the client closes it, which only ``v5`` can say
  (``0xff 0x00``); on ``v4`` it stays open until the client goes away. Stdout and stderr are
  sent in several frames of at most :attr:`FakeKube.frame_bytes` bytes, cut anywhere (even
  inside a UTF-8 character), interleaved; then the exit ``Status`` on channel 3: Success,
  NonZeroExitCode with an ``ExitCode`` cause, or — when the handler raises
  :class:`ExecError` (e.g. :class:`CommandNotFound`) — InternalError without one.
  :class:`DropConnection` ends the connection with no status at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fake_status import exec_exit, exec_internal_error, exec_success

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
PORTFORWARD_PROTOCOLS = (V4, "v4.base64.channel.k8s.io", "channel.k8s.io")


@dataclass
class Recorded:
    """One request the server received (``protocol``: the WebSocket subprotocol chosen)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    protocol: str = ""


class ExecError(Exception):
    """Raised by an exec handler: the command could not be run at all; the kubelet answers
    an InternalError Status (``error executing command in container: <message>``)."""


class CommandNotFound(ExecError):
    """Raised by an exec handler: ``program`` is not in the image (containerd/runc's
    wording)."""

    def __init__(self, program: str) -> None:
        super().__init__(f'failed to exec in container: failed to start exec: OCI runtime exec '
                         f'failed: exec failed: unable to start container process: exec: '
                         f'"{program}": executable file not found in $PATH: unknown')


class DropConnection(Exception):
    """Raised by an exec handler: the connection breaks mid-exec (no status, no close)."""


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A server→client WebSocket frame (FIN, unmasked)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 127]) + struct.pack(">Q", n)
    return head + payload


def ws_read(rfile: Any) -> tuple[int, bytes] | None:
    """One client→server frame ``(opcode, unmasked payload)``, None at EOF."""
    head = rfile.read(2)
    if len(head) < 2:
        return None
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b""
    data = rfile.read(n)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return head[0] & 0x0F, data


def negotiate(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """The first protocol of the client's offer that the server supports (client order)."""
    return next((p for p in offered if p in supported), None)


def output_frames(out: bytes, err: bytes, size: int) -> list[bytes]:
    """Channel 1 and 2 payloads cut into frames of at most ``size`` bytes, interleaved."""
    parts = [[bytes([ch]) + data[i:i + size] for i in range(0, len(data), size)]
             for ch, data in ((1, out), (2, err))]
    frames = []
    for i in range(max(len(parts[0]), len(parts[1]))):
        frames += [p[i] for p in parts if i < len(p)]
    return frames


def handler(fake: Any) -> type[BaseHTTPRequestHandler]:
    """The request handler class of ``fake`` (a :class:`kube_fake_server.FakeKube`)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, answer: Any) -> None:
            data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(answer, str)
                             else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            record = Recorded(self.command, url.path, query, body, dict(self.headers))
            fake.requests.append(record)
            if self.headers.get("Upgrade", "").lower() == "websocket":
                self._websocket(record)
                return
            self._reply(*fake.handle(self.command, url.path, query, body))

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def _websocket(self, record: Recorded) -> None:
            self.close_connection = True
            refused = fake.connect(record.method, record.path, record.query)
            if refused is not None:
                self._reply(*refused)
                return
            offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "")
                       .split(",") if p.strip()]
            exec_ = record.path.endswith("/exec")
            proto = negotiate(offered, fake.exec_protocols if exec_ else PORTFORWARD_PROTOCOLS)
            if proto is None:
                self.send_response(403)
                self.end_headers()
                return
            record.protocol = proto
            accept = base64.b64encode(hashlib.sha1(
                (self.headers["Sec-WebSocket-Key"] + _WS_GUID).encode()).digest()).decode()
            self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
                              f"Sec-WebSocket-Protocol: {proto}\r\n\r\n").encode())
            pod = record.path.split("/")[-2]
            if exec_:
                self._exec(pod, record.query, proto)
            else:
                self._portforward(pod, int(record.query["ports"][0]))

        def _read_stdin(self, proto: str) -> bytes | None:
            """Stdin until the client closes it (v5); None when the client went away first
            (always so on v4, which cannot close a channel)."""
            stdin = b""
            while (frame := ws_read(self.rfile)) is not None and frame[0] != 8:
                if frame[1][:1] == b"\x00":
                    stdin += frame[1][1:]
                elif proto == V5 and frame[1] == b"\xff\x00":
                    return stdin
            return None

        def _exec(self, pod: str, query: dict[str, list[str]], proto: str) -> None:
            stdin = b""
            if query.get("stdin") == ["true"]:
                got = self._read_stdin(proto)
                if got is None:
                    return
                stdin = got
            out = err = ""
            try:
                rc, out, err = fake.exec_handler(pod, query["container"][0], query["command"],
                                                 stdin)
                status = exec_success() if rc == 0 else exec_exit(rc)
            except DropConnection:
                return
            except ExecError as exc:
                status = exec_internal_error(str(exc))
            for payload in output_frames(out.encode(), err.encode(), fake.frame_bytes):
                self.wfile.write(ws_frame(2, payload))
            self.wfile.write(ws_frame(2, b"\x03" + json.dumps(status).encode()))
            self.wfile.write(ws_frame(8, struct.pack(">H", 1000)))

        def _portforward(self, pod: str, port: int) -> None:
            port_bytes = struct.pack("<H", port)
            self.wfile.write(ws_frame(2, b"\x00" + port_bytes) + ws_frame(2, b"\x01" + port_bytes))
            request = b""
            while b"\r\n\r\n" not in request:
                frame = ws_read(self.rfile)
                if frame is None or frame[0] == 8:
                    return
                if frame[1][:1] == b"\x00":
                    request += frame[1][1:]
            method, target, _ = request.split(b"\r\n")[0].decode().split(" ")
            fake.admin_requests.append(request.decode())
            status, text = fake.admin_handler(pod, method, target)
            data = text.encode()
            reply = (f"HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n").encode() + data
            self.wfile.write(ws_frame(2, b"\x00" + reply))
            while (frame := ws_read(self.rfile)) is not None and frame[0] != 8:
                pass  # until the client closes its side
            self.wfile.write(ws_frame(8, struct.pack(">H", 1000)))

    return Handler
