"""Client helper run inside a test netns: ``python _nsclient.py '<json op>'`` → JSON on stdout.

Ops: {"op": "wait", "host", "port", "timeout_s"}; {"op": "get", "host", "port", "path",
"headers", "n", "keepalive"}; {"op": "bench", "host", "port", "path", "n", "conns"};
{"op": "session", "host", "port"} (interactive, see :func:`session`);
{"op": "http", "host", "port", "path", "method", "headers", "body"} (one request, any method);
{"op": "raw", "host", "port", "data", "timeout_s", "hold"} (see :func:`raw`);
{"op": "parallel", "host", "port", "paths"} (concurrent GETs, one connection each).
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


def http_op(host, port, path, method="GET", headers=None, body=""):
    """One HTTP request on a fresh connection; a refused/reset connection → status 0."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request(method, path, body=body.encode() or None, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
    except OSError as exc:
        return {"status": 0, "headers": {}, "body": "", "error": str(exc)}
    return {"status": resp.status, "headers": {k.lower(): v for k, v in resp.getheaders()},
            "body": data.decode("latin-1")}


def tcp(host, port, payload):
    """Send payload, half-close, read until EOF."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload.encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return {"echo": b"".join(chunks).decode()}


def parallel(host, port, paths):
    """One GET per path, all at once, each on its own connection (see :func:`http_op`)."""
    out = [None] * len(paths)

    def one(i):
        out[i] = http_op(host, port, paths[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _recv(s, marker, timeout_s):
    """Read until ``marker`` is seen (or EOF/timeout when marker is None)."""
    s.settimeout(timeout_s)
    chunks, eof, start = [], False, time.monotonic()
    try:
        while marker is None or marker.encode() not in b"".join(chunks):
            data = s.recv(65536)
            if not data:
                eof = True
                break
            chunks.append(data)
    except TimeoutError:
        pass
    return {"data": b"".join(chunks).decode("latin-1"), "eof": eof,
            "waited_s": time.monotonic() - start}


def raw(host, port, data, timeout_s=5.0, hold=None):
    """Send ``data`` as is and read until the peer closes.

    With ``hold`` = {"host", "port", "data"}, first open a second connection that sends only
    ``data`` (e.g. half a request head) and keeps it open during the exchange.

    Returns:
        {"data": the reply, "eof": peer closed, "waited_s": time to EOF/timeout}.
    """
    held = None
    if hold:
        held = socket.create_connection((hold["host"], hold["port"]), timeout=10)
        held.sendall(hold["data"].encode("latin-1"))
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(data.encode("latin-1"))
            return _recv(s, None, timeout_s)
    finally:
        if held is not None:
            held.close()


def session(host, port):
    """Interactive TCP client: one JSON command per stdin line, one JSON reply per stdout line.

    Commands: {"cmd": "send", "data"}, {"cmd": "send_bulk", "nbytes"}, {"cmd": "shutdown"},
    {"cmd": "recv_until", "marker", "timeout_s"}, {"cmd": "recv_eof", "timeout_s"},
    {"cmd": "close"} (ends the session).
    """
    s = socket.create_connection((host, port), timeout=10)
    print(json.dumps({"ok": True, "local": "{}:{}".format(*s.getsockname())}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        kind = cmd["cmd"]
        if kind == "send":
            s.sendall(cmd["data"].encode())
            out = {"ok": True}
        elif kind == "send_bulk":
            s.settimeout(30)
            s.sendall(b"x" * cmd["nbytes"])
            out = {"ok": True}
        elif kind == "shutdown":
            s.shutdown(socket.SHUT_WR)
            out = {"ok": True}
        elif kind == "recv_until":
            out = _recv(s, cmd["marker"], cmd.get("timeout_s", 10))
        elif kind == "recv_eof":
            out = _recv(s, None, cmd.get("timeout_s", 10))
        else:
            s.close()
            print(json.dumps({"ok": True}), flush=True)
            return
        print(json.dumps(out), flush=True)
    s.close()


if __name__ == "__main__":
    op = json.loads(sys.argv[1])
    kind = op.pop("op")
    if kind == "session":
        session(**op)
        sys.exit(0)
    result = {"wait": wait, "get": get, "bench": bench, "tcp": tcp, "http": http_op,
              "raw": raw, "parallel": parallel}[kind](**op)
    print(json.dumps(result))
