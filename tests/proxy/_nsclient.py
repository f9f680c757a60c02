"""Client helper run inside a test netns: ``python _nsclient.py '<json op>'`` → JSON on stdout.

Ops: {"op": "wait", "host", "port", "timeout_s"}; {"op": "get", "host", "port", "path",
"headers", "n", "keepalive"}; {"op": "bench", "host", "port", "path", "n", "conns"}.
"""

import http.client
import json
import socket
import sys
import threading
import time


def wait(host, port, timeout_s):
    deadline = time.monotonic() + timeout_s
    for _ in range(10000):
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return {"ok": True}
        except OSError as exc:
            err = str(exc)
        if time.monotonic() > deadline:
            return {"ok": False, "error": err}
        time.sleep(0.02)
    return {"ok": False, "error": "loop bound"}


def get(host, port, path, headers, n, keepalive):
    out = []
    conn = None
    for _ in range(n):
        if conn is None or not keepalive:
            conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        out.append({"status": resp.status, "headers": {k.lower(): v for k, v in resp.getheaders()},
                    "body": body.decode("latin-1")})
        if not keepalive:
            conn.close()
    return out


def bench(host, port, path, n, conns):
    done = [0, 0]
    lock = threading.Lock()

    def worker(count):
        c = http.client.HTTPConnection(host, port, timeout=10)
        for _ in range(count):
            try:
                c.request("GET", path)
                r = c.getresponse()
                r.read()
                ok = r.status == 200
            except OSError:
                ok = False
                c = http.client.HTTPConnection(host, port, timeout=10)
            with lock:
                done[0 if ok else 1] += 1

    threads = [threading.Thread(target=worker, args=(n // conns,)) for _ in range(conns)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - start
    return {"ok": done[0], "errors": done[1], "elapsed_s": elapsed, "rps": done[0] / elapsed}


def tcp(host, port, payload):
    """Send payload, half-close, read until EOF."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload.encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return {"echo": b"".join(chunks).decode()}


if __name__ == "__main__":
    op = json.loads(sys.argv[1])
    kind = op.pop("op")
    result = {"wait": wait, "get": get, "bench": bench, "tcp": tcp}[kind](**op)
    print(json.dumps(result))
