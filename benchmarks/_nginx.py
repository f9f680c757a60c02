"""nginx configs for the benchmark: the 1 KB app, and an L7 proxy equivalent to a sidecar.

Every instance runs in the foreground (``daemon off``) with one worker process, as a non-root
uid (the ``user`` directive is ignored then), from a config, pid file, logs and temp paths in
its own directory; nothing under ``/etc/nginx`` or ``/var/log/nginx`` is used (``-e`` moves the
startup error log too). Keep-alive is made effectively unlimited on both sides
(``keepalive_requests``), as Envoy's HTTP/1.1 pools and listeners have no request cap.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

BODY_BYTES = 1024
_COMMON = """daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
  client_body_temp_path {d}/tmp-body;
  proxy_temp_path {d}/tmp-proxy;
  fastcgi_temp_path {d}/tmp-fcgi;
  uwsgi_temp_path {d}/tmp-uwsgi;
  scgi_temp_path {d}/tmp-scgi;
  keepalive_requests 100000000;
  keepalive_timeout 3600s;
  tcp_nodelay on;
{body}
}}
"""

APP_SERVER = """  access_log off;
  server {{
    listen {port} reuseport backlog=1024;
    default_type text/plain;
    location / {{ return 200 "{payload}"; }}
  }}"""

PROXY_SERVER = """  access_log {d}/access.log;
  upstream backend {{
    server {upstream};
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 3600s;
  }}
  server {{
    listen {port} backlog=1024;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
{bind}    }}
  }}"""


STATUS_SERVER = """
  server {{
    listen 127.0.0.1:{port};
    location / {{ stub_status; }}
  }}"""


def app_config(workdir: Path, port: int, status_port: int | None = None) -> str:
    """nginx.conf of the app: ``return 200`` with a 1 KB text body on ``port``, no access log.

    With ``status_port``, ``stub_status`` (total requests handled, see :func:`handled_requests`)
    is served on ``127.0.0.1:status_port`` as well.
    """
    body = APP_SERVER.format(port=port, payload="x" * BODY_BYTES)
    if status_port is not None:
        body += STATUS_SERVER.format(port=status_port)
    return _COMMON.format(d=workdir, body=body)


def handled_requests(stub_status: str) -> int:
    """Total requests from a ``stub_status`` page (third number of its ``accepts handled
    requests`` line)."""
    lines = stub_status.splitlines()
    return int(lines[lines.index("server accepts handled requests") + 1].split()[2])


def proxy_config(workdir: Path, port: int, upstream: str, bind_ip: str | None = None) -> str:
    """nginx.conf of an L7 proxy: listen ``port``, forward to ``upstream`` (``ip:port``).

    HTTP/1.1 upstream with a keep-alive pool (64 idle connections), access log on (combined
    format, one write per request — the sidecar writes its lines once per event-loop pass), and
    ``proxy_bind bind_ip`` when given (the inbound side binds 127.0.0.6 as Envoy does, so
    Istio's capture rules let the connection through to the app).
    """
    bind = f"      proxy_bind {bind_ip};\n" if bind_ip else ""
    return _COMMON.format(d=workdir, body=PROXY_SERVER.format(d=workdir, port=port,
                                                              upstream=upstream, bind=bind))


def write_config(workdir: Path, text: str) -> Path:
    """Create ``workdir`` (world-readable, writable for the nginx uid) and its nginx.conf."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o777)
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    return conf


def nginx_argv(conf: Path) -> list[str]:
    """``nginx`` in the foreground with prefix, config and startup error log under ``conf``'s dir."""
    d = conf.parent
    return ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")]


def nginx_version() -> str:
    """e.g. ``nginx/1.22.1`` (``nginx -v`` prints to stderr); ``""`` when not installed."""
    try:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return ""
    m = re.search(r"nginx/\S+", out.stderr)
    return m.group(0) if m else out.stderr.strip()
