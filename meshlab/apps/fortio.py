"""``fortio`` command line, server side: ``python -m meshlab.apps.fortio server -M "8070 http://x:8080"``.

Pods whose manifest image is ``fortio/fortio`` run this module with the container's args. Flags
follow Go's ``flag`` package as fortio uses it: the command comes first, then ``-name value``,
``-name=value`` or ``--name``; bool flags take ``-name`` / ``-name=false``; ``--`` or the first
non-flag argument ends the flags (fortio server commands then refuse extra arguments).

Commands: ``server`` (all listeners), ``proxies`` (only ``-M``), ``tcp-echo``, ``udp-echo``,
``version``. Unknown commands or flags, bad values and unsupported features (``-P`` TCP proxies,
Unix sockets, https targets) exit 2 with one ``fortio: error: …`` line; a port that cannot be
bound exits 1. SIGTERM/SIGINT stop the server and exit 0.

One flag is meshlab's own: ``-meshlab-idle-race D`` answers a request that arrives after ``D``
of keep-alive idle with a RST (:mod:`meshlab.apps.idle_race`). Real fortio rejects it, so a
manifest using it needs meshlab's app (the local lab, or a cluster image that runs it).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshlab.apps.fortio_query import EchoLimits, parse_go_duration_s
from meshlab.apps.fortio_replies import VERSION, EchoConfig
from meshlab.apps.fortio_server import FortioConfig, FortioServer, MultiSpec
from meshlab.apps.fortio_upstream import Destination
from meshlab.apps.netutil import parse_listen_spec
from meshlab.errors import ConfigError, LabError

log = logging.getLogger("meshlab.apps.fortio")

COMMANDS = ("server", "proxies", "tcp-echo", "udp-echo", "version")
_LOG_LEVELS = {"debug": logging.DEBUG, "verbose": logging.DEBUG, "info": logging.INFO,
               "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL,
               "fatal": logging.CRITICAL}


@dataclass(frozen=True)
class _Flag:
    kind: str  # "str", "bool", "duration", "int", "list"
    default: Any
    help: str


FLAGS: dict[str, _Flag] = {
    "M": _Flag("list", [], 'HTTP multi proxy, e.g. -M "localport baseDestURL1 baseDestURL2"'),
    "http-port": _Flag("str", "8080", "http-echo server port, host:port or 'disabled'"),
    "grpc-port": _Flag("str", "8079", "gRPC port (TCP accept only in meshlab) or 'disabled'"),
    "tcp-port": _Flag("str", "8078", "tcp-echo server port or 'disabled'"),
    "udp-port": _Flag("str", "8078", "udp-echo server port or 'disabled'"),
    "redirect-port": _Flag("str", "8081", "http to https redirector port or 'disabled'"),
    "echo-debug-path": _Flag("str", "/debug", "debug dump URI, empty turns it off"),
    "echo-server-default-params": _Flag("str", "", "query used when a request has none"),
    "max-echo-delay": _Flag("duration", 1.5, "maximum delay= honoured by the echo server"),
    "maxpayloadsizekb": _Flag("int", 256, "maximum size= payload, in KiB"),
    "multi-mirror-origin": _Flag("bool", True, "append the request URI to -M targets"),
    "multi-serial-mode": _Flag("bool", False, "query -M targets one at a time"),
    "timeout": _Flag("duration", 3.0, "deadline of one -M forwarded request"),
    "server-idle-timeout": _Flag("duration", 30.0, "keep-alive idle timeout of the servers"),
    "meshlab-idle-race": _Flag("duration", 0.0, "meshlab only: answer a request arriving after "
                               "this long idle with a RST (keep-alive race; 0 = off)"),
    "loglevel": _Flag("str", "info", "debug, verbose, info, warning, error, critical"),
    "ui-path": _Flag("str", "/fortio/", "accepted for compatibility; the UI is not served"),
    "udp-async": _Flag("bool", False, "accepted for compatibility; no effect"),
}
_UNSUPPORTED = {"P": "-P (TCP proxies) is not supported by meshlab's fortio server"}


def usage() -> str:
    """The ``-h`` text."""
    lines = [f"Φορτίο-compatible server (meshlab {VERSION})",
             "usage: python -m meshlab.apps.fortio {" + ",".join(COMMANDS) + "} [flags]", ""]
    for name, flag in FLAGS.items():
        default = "" if flag.kind == "list" else f" (default {flag.default!r})"
        lines.append(f"  -{name}: {flag.help}{default}")
    return "\n".join(lines) + "\n"


def _convert(name: str, flag: _Flag, raw: str) -> Any:
    if flag.kind == "bool":
        lowered = raw.lower()
        if lowered in ("1", "t", "true"):
            return True
        if lowered in ("0", "f", "false"):
            return False
        raise ConfigError(f"invalid boolean value {raw!r} for flag -{name}")
    if flag.kind == "duration":
        try:
            return parse_go_duration_s(raw)
        except ValueError:
            raise ConfigError(f"invalid value {raw!r} for flag -{name}: not a duration "
                              "(e.g. 250ms, 1.5s)") from None
    if flag.kind == "int":
        try:
            return int(raw, 10)
        except ValueError:
            raise ConfigError(f"invalid value {raw!r} for flag -{name}: not an integer") from None
    return raw


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``command [flags]`` like Go's ``flag`` package.

    Args:
        argv: arguments after the program name.

    Returns:
        The command and every flag's value (defaults filled in; ``M`` is a list).

    Raises:
        ConfigError: missing/unknown command, unknown flag, bad value or extra arguments.
    """
    if not argv:
        raise ConfigError("missing command (one of: " + ", ".join(COMMANDS) + ")")
    command, rest = argv[0], argv[1:]
    if command in ("-h", "-help", "--help", "help"):
        return "help", {}
    if command not in COMMANDS:
        raise ConfigError(f"unknown or unsupported command {command!r} (meshlab supports: "
                          + ", ".join(COMMANDS) + ")")
    values: dict[str, Any] = {n: list(f.default) if f.kind == "list" else f.default
                              for n, f in FLAGS.items()}
    index = 0
    while index < len(rest):
        arg = rest[index]
        index += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            index -= 1
            break
        name, has_value, raw = arg.lstrip("-").partition("=")
        if name in ("h", "help"):
            return "help", {}
        if name in _UNSUPPORTED:
            raise ConfigError(_UNSUPPORTED[name])
        flag = FLAGS.get(name)
        if flag is None:
            raise ConfigError(f"flag provided but not defined: -{name}")
        if not has_value and flag.kind != "bool":
            if index >= len(rest):
                raise ConfigError(f"flag needs an argument: -{name}")
            raw, index = rest[index], index + 1
        value = True if not has_value and flag.kind == "bool" else _convert(name, flag, raw)
        if flag.kind == "list":
            values[name].append(value)
        else:
            values[name] = value
    if rest[index:]:
        raise ConfigError(f"too many arguments (typo in a flag?): {' '.join(rest[index:])}")
    return command, values


def _multi(value: str, mirror_origin: bool) -> MultiSpec:
    parts = value.split()
    if len(parts) < 2:
        raise ConfigError(f'invalid syntax for -M {value!r}, should be "localAddr destURL1 '
                          'destURL2..."')
    listen = parse_listen_spec("-M", parts[0])
    if listen is None:
        raise ConfigError(f"-M {value!r}: a multi server cannot be disabled")
    return MultiSpec(listen, tuple(Destination.parse(url, mirror_origin) for url in parts[1:]))


def build_config(command: str, values: dict[str, Any]) -> FortioConfig:
    """Turn parsed flags into a :class:`FortioConfig` for ``command``.

    Raises:
        ConfigError: a value is invalid or the command has nothing to run.
    """
    mirror = bool(values["multi-mirror-origin"])
    kb = max(int(values["maxpayloadsizekb"]), 0)
    limits = EchoLimits(max_delay_s=float(values["max-echo-delay"]), max_payload_bytes=kb * 1024)
    timeout_s = float(values["timeout"])
    config = FortioConfig(
        http=parse_listen_spec("-http-port", values["http-port"]),
        grpc=parse_listen_spec("-grpc-port", values["grpc-port"]),
        tcp=parse_listen_spec("-tcp-port", values["tcp-port"]),
        udp=parse_listen_spec("-udp-port", values["udp-port"]),
        redirect=parse_listen_spec("-redirect-port", values["redirect-port"]),
        multis=[_multi(v, mirror) for v in values["M"]],
        echo=EchoConfig.create(limits, values["echo-server-default-params"],
                               values["echo-debug-path"]),
        multi_serial=bool(values["multi-serial-mode"]), mirror_origin=mirror,
        timeout_s=timeout_s if timeout_s > 0 else 3.0,
        idle_timeout_s=max(float(values["server-idle-timeout"]), 0.001),
        idle_race_s=float(values["meshlab-idle-race"]))
    keep = {"server": ("http", "grpc", "tcp", "udp", "redirect"), "proxies": (),
            "tcp-echo": ("tcp",), "udp-echo": ("udp",)}[command]
    for name in ("http", "grpc", "tcp", "udp", "redirect"):
        if name not in keep:
            setattr(config, name, None)
    if command == "proxies" and not config.multis:
        raise ConfigError("fortio proxies command needs at least one -M flag")
    return config


async def run(config: FortioConfig, stop: asyncio.Event | None = None) -> None:
    """Run the servers until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None).

    Raises:
        LabError: a listener cannot be bound.
    """
    server = FortioServer(config)
    await server.start()
    log.info("All fortio %s servers started!", VERSION)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None,
         runner: Callable[[FortioConfig], Any] | None = None) -> int:
    """CLI entry point.

    Args:
        argv: arguments after the program name (defaults to ``sys.argv[1:]``).
        runner: replaces :func:`run` (tests); receives the config.

    Returns:
        Exit status: 0 ok, 1 a listener could not be bound, 2 bad arguments.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        command, values = parse_args(args)
        if command == "help":
            sys.stdout.write(usage())
            return 0
        if command == "version":
            print(VERSION)
            return 0
        config = build_config(command, values)
        level = _LOG_LEVELS.get(str(values["loglevel"]).lower())
        if level is None:
            raise ConfigError(f"invalid -loglevel {values['loglevel']!r} (one of: "
                              + ", ".join(_LOG_LEVELS) + ")")
    except ConfigError as err:
        print(f"fortio: error: {err}\n(see: python -m meshlab.apps.fortio -h)", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(message)s")
    try:
        if runner is not None:
            runner(config)
        else:
            asyncio.run(run(config))
    except LabError as err:
        print(f"fortio: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
