"""Reading one HTTP/1.1 response from a raw socket in the fault tests (requests sent by hand on
an open connection, so a test controls which connection each request uses)."""

from __future__ import annotations

import socket


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head + ``Content-Length`` body); what came so far (maybe b"") when
    the socket's timeout passes or the peer closes first."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
        return head + b"\r\n\r\n" + body
    except TimeoutError:
        return data
