"""Envoy's component loggers and admin ``POST /logging`` (sans-IO; ENVOY.md §5).

Rules:

- No parameter: list the loggers (200). ``level=<l>`` sets every logger, ``<logger>=<l>`` one
  logger, ``paths=a:l1,b:l2`` several. Exactly one parameter per request.
- Anything else (unknown logger or level, several parameters) is a 400 whose body is
  ``error: …``, a blank line, the three usage lines and the level list, then the logger list.
- Istio starts the proxy with ``--log-level warning --component-log-level misc:error``.

The levels only gate what the sidecar prints on stderr (:meth:`LogLevels.enabled`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")

#: Envoy component logger names (``ALL_LOGGER_IDS``), printed sorted.
LOGGER_NAMES = (
    "admin", "alternate_protocols_cache", "aws", "assert", "backtrace", "basic_auth",
    "cache_filter", "client", "config", "connection", "conn_handler", "decompression", "dns",
    "dubbo", "envoy_bug", "ext_authz", "ext_proc", "file", "filter", "forward_proxy", "grpc",
    "happy_eyeballs", "hc", "health_checker", "http", "http2", "hystrix", "init", "io", "jwt",
    "kafka", "key_value_store", "lua", "main", "matcher", "misc", "mongo", "multi_connection",
    "oauth2", "pool", "quic", "quic_stream", "rbac", "rds", "redis", "rocketmq", "router",
    "runtime", "secret", "stats", "tap", "testing", "thrift", "tracing", "udp", "upstream",
    "wasm", "websocket",
)

#: Istio's injected defaults: ``--log-level warning``, ``--component-log-level misc:error``.
ISTIO_DEFAULT_LEVEL = "warning"
ISTIO_COMPONENT_LEVELS = {"misc": "error"}

_USAGE = ("usage: /logging?<name>=<level> (change single level)\n"
          "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
          "usage: /logging?level=<level> (change all levels)\n"
          "levels: " + "".join(f"{lv} " for lv in LEVELS) + "\n")


class LogLevels:
    """Level of every component logger.

    Args:
        default: level of every logger.
        components: per-logger overrides.

    Raises:
        ValueError: an unknown level or logger name.
    """

    def __init__(self, default: str = ISTIO_DEFAULT_LEVEL,
                 components: Mapping[str, str] = ISTIO_COMPONENT_LEVELS) -> None:
        self._levels = {name: _check_level(default) for name in LOGGER_NAMES}
        for name, level in components.items():
            self.set(name, level)

    def set(self, name: str, level: str) -> None:
        """Set one logger.

        Raises:
            ValueError: unknown logger or level.
        """
        if name not in self._levels:
            raise ValueError(f"unknown logger name '{name}'")
        self._levels[name] = _check_level(level)

    def set_all(self, level: str) -> None:
        """Set every logger.

        Raises:
            ValueError: unknown level.
        """
        checked = _check_level(level)
        for name in self._levels:
            self._levels[name] = checked

    def level(self, name: str) -> str:
        """Current level of ``name`` (KeyError if unknown)."""
        return self._levels[name]

    def enabled(self, name: str, level: str) -> bool:
        """True when a ``level`` message of logger ``name`` would be printed."""
        return LEVELS.index(level) >= LEVELS.index(self._levels.get(name, "off"))

    def listing(self) -> str:
        """``active loggers:`` and one ``  <name>: <level>`` line per logger."""
        return "active loggers:\n" + "".join(
            f"  {n}: {lv}\n" for n, lv in sorted(self._levels.items()))

    def handle(self, params: Mapping[str, Sequence[str]]) -> tuple[int, str]:
        """Apply a ``POST /logging`` query; returns ``(status, body)``."""
        try:
            self._apply(params)
        except ValueError as exc:
            return 400, f"error: {exc}\n\n{_USAGE}{self.listing()}"
        return 200, self.listing()

    def _apply(self, params: Mapping[str, Sequence[str]]) -> None:
        if not params:
            return
        if len(params) != 1 or any(len(v) != 1 for v in params.values()):
            raise ValueError("exactly one parameter is expected")
        [(key, [value])] = [(k, list(v)) for k, v in params.items()]
        if key == "level":
            self.set_all(value)
        elif key == "paths":
            pairs = [p.split(":", 1) for p in value.split(",") if p]
            if not pairs or any(len(p) != 2 for p in pairs):
                raise ValueError(f"invalid paths '{value}': expected name:level pairs")
            for name, level in pairs:  # validate all before changing any
                _check_level(level)
                if name not in self._levels:
                    raise ValueError(f"unknown logger name '{name}'")
            for name, level in pairs:
                self.set(name, level)
        else:
            self.set(key, value)

    def __repr__(self) -> str:
        return f"LogLevels(misc={self._levels['misc']!r}, main={self._levels['main']!r})"


def _check_level(level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"unknown logger level '{level}'")
    return level
