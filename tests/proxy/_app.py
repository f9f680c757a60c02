"""Tiny HTTP/1.1 keep-alive app for the sidecar integration tests (runs inside a netns).

GET /echo → JSON {"headers": {...}, "peer": "ip:port"}; GET /status/<n> → status n;
GET /peers → JSON list of distinct peer addresses seen (to count upstream connections).
Any path takes ``?delay=<seconds>`` (answer late) and ``?fail_on=<ip>`` (answer 503 when the
connection arrived on that local address, e.g. a second IP of the pod). GET /close → close without answering (FIN);
GET /reset → abort with RST; GET /garbage → answer bytes that are not HTTP, then close.
GET /stall → answer the head and half of a 2000-byte body, then stall 10 s before the rest.
GET /big?size=<bytes> → a body of that many bytes, written as fast as the peer takes it.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PEERS: list[str] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # like Go servers (fortio); avoids 40 ms Nagle stalls

    def log_message(self, *args):  # quiet
        pass

    def _misbehave(self, route):
        """The /close, /reset and /garbage endpoints; True when one was served."""
        import socket
        import struct

        if route == "/garbage":
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            self.wfile.flush()
        elif route == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        elif route != "/close":
            return False
        self.close_connection = True
        return True

    def do_POST(self):
        """Echo the request body (``content-length`` framed) with 200."""
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        import time
        from urllib.parse import parse_qs, urlsplit

        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        if peer not in PEERS:
            PEERS.append(peer)
        url = urlsplit(self.path)
        delay = parse_qs(url.query).get("delay")
        if delay:
            time.sleep(min(float(delay[0]), 30.0))
        if self._misbehave(url.path):
            return
        if url.path == "/big":  # a large body, written as fast as the peer takes it
            size = int(parse_qs(url.query).get("size", ["0"])[0])
            self.send_response(200)
            self.send_header("content-length", str(size))
            self.end_headers()
            chunk = b"b" * 65536
            while size > 0:
                self.wfile.write(chunk[:size])
                size -= len(chunk)
            return
        if url.path == "/stall":  # a body stuck behind the network (retransmissions)
            self.send_response(200)
            self.send_header("content-length", "2000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            time.sleep(10)
            self.wfile.write(b"x" * 1000)
            return
        status = 200
        fail_on = parse_qs(url.query).get("fail_on")  # 503 when called on that local IP
        if fail_on and self.connection.getsockname()[0] == fail_on[0]:
            status = 503
        if self.path == "/peers":
            body = json.dumps(PEERS).encode()
        elif url.path.startswith("/status/"):
            status = int(url.path.rsplit("/", 1)[1])
            body = b"app says %d" % status
        else:
            body = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()},
                               "peer": peer, "path": self.path}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def tcp_echo(port):
    """Echo everything back; close after the peer's FIN.

    A connection whose data starts with ``LINGER`` instead answers ``after-eof\\n`` after the
    peer's FIN and then keeps its socket open (CLOSE-WAIT), for the half-close tests.
    """
    import socket
    import threading

    srv = socket.create_server(("0.0.0.0", port), reuse_port=False)

    def serve(conn):
        with conn:
            head = b""
            while data := conn.recv(65536):
                head = (head + data)[:6] if len(head) < 6 else head
                conn.sendall(data)
            if head == b"LINGER":  # half-close tests: answer after EOF, then stay half-open
                conn.sendall(b"after-eof\n")
                threading.Event().wait(3600)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    import threading

    if len(sys.argv) > 2:
        threading.Thread(target=tcp_echo, args=(int(sys.argv[2]),), daemon=True).start()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
