"""Tiny HTTP/1.1 keep-alive app for the sidecar integration tests (runs inside a netns).

GET /echo → JSON {"headers": {...}, "peer": "ip:port"}; GET /status/<n> → status n;
GET /peers → JSON list of distinct peer addresses seen (to count upstream connections).
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

    def do_GET(self):
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        if peer not in PEERS:
            PEERS.append(peer)
        status = 200
        if self.path == "/peers":
            body = json.dumps(PEERS).encode()
        elif self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
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
    """Echo everything back; close after the peer's FIN."""
    import socket
    import threading

    srv = socket.create_server(("0.0.0.0", port), reuse_port=False)

    def serve(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    import threading

    if len(sys.argv) > 2:
        threading.Thread(target=tcp_echo, args=(int(sys.argv[2]),), daemon=True).start()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
