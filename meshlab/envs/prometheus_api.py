"""``PrometheusClient``: instant queries, targets and readiness of a Prometheus server.

A thin layer over ``prometheus_api_client.PrometheusConnect`` (HTTP API v1). On a cluster it
takes the configured URL; in the local lab (:meth:`LocalEnv.prometheus`) it also takes a
``runner`` that makes each call inside the lab's cluster netns: the host cannot route into the
lab, so every call runs in a short-lived thread that entered that netns
(:func:`meshlab.envs.local.netns_socket.netns_runner`) and the session's pooled sockets live
there too. No retries below this layer (the callers poll with a
deadline) and no proxy from the environment (``trust_env`` off: lab addresses are private).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from urllib3.util.retry import Retry

from meshlab.errors import LabError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_SCRAPE_INTERVAL_S = 15.0
"""Istio's Prometheus addon default, assumed for a server whose interval is not given."""


class PrometheusError(LabError):
    """A Prometheus API call failed (connection, HTTP status or response shape)."""


class PrometheusClient:
    """Queries one Prometheus server.

    Args:
        url: base URL, e.g. ``http://172.18.0.1:9090``.
        runner: runs each call, e.g. inside the local lab's netns (``runner(fn)`` returns
            ``fn()``, raises :class:`LabError` when it cannot); None: in the calling thread.
        where: where ``runner`` makes the calls (shown in errors and ``repr``).
        timeout_s: per-request timeout in seconds.
        scrape_interval_s: the server's scrape interval in seconds (how far back a range
            query reaches for the last sample before a window, how long to wait for the next).
    """

    def __init__(self, url: str, *, runner: Callable[[Callable[[], Any]], Any] | None = None,
                 where: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S) -> None:
        self.url = url.rstrip("/")
        self.runner = runner
        self.where = where
        self.timeout_s = timeout_s
        self.scrape_interval_s = scrape_interval_s
        self._session = requests.Session()
        self._session.trust_env = False
        self._conn = PrometheusConnect(url=self.url, session=self._session, timeout=timeout_s,
                                       retry=Retry(total=0, raise_on_status=False))

    def __repr__(self) -> str:
        return (f"PrometheusClient(url={self.url!r}, where={self.where!r}, "
                f"scrape_interval_s={self.scrape_interval_s:g})")

    def close(self) -> None:
        """Close the pooled connections."""
        self._conn.close()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn() if self.runner is None else self.runner(fn)
        except (requests.RequestException, PrometheusApiClientException, ValueError,
                KeyError) as exc:
            raise PrometheusError(f"Prometheus {self.url}: {exc}") from exc

    def ready(self) -> bool:
        """True when ``GET /-/ready`` answers 200 (False on any error)."""
        def get() -> bool:
            return self._session.get(f"{self.url}/-/ready",
                                     timeout=self.timeout_s).status_code == 200
        try:
            return self._call(get)
        except LabError:
            return False

    def query(self, promql: str, at_epoch_s: float | None = None) -> list[dict[str, Any]]:
        """An instant query (``/api/v1/query``) at ``at_epoch_s`` (None: the server's now).

        Returns:
            ``[{"labels": {name: value}, "value": float, "t": epoch_s}]`` for a vector result
            (``__name__`` kept when the expression keeps it), one entry for a scalar.

        Raises:
            PrometheusError: connection failure, a non-200 answer (bad PromQL), or a result
                that is neither vector nor scalar.
        """
        params = {} if at_epoch_s is None else {"time": f"{at_epoch_s:.3f}"}
        data = self._call(lambda: self._conn.custom_query(promql, params=params))
        if len(data) == 2 and not isinstance(data[0], dict):  # scalar: [t, "value"]
            return [{"labels": {}, "value": float(data[1]), "t": float(data[0])}]
        out = []
        for item in data:
            if not isinstance(item, dict) or "value" not in item:
                raise PrometheusError(f"Prometheus {self.url}: {promql!r} is not a vector "
                                      f"query (got {item!r:.200})")
            t, value = item["value"]
            out.append({"labels": dict(item.get("metric", {})), "value": float(value),
                        "t": float(t)})
        return out

    def targets(self) -> list[dict[str, Any]]:
        """Active targets (``/api/v1/targets``): ``[{"job", "url", "health", "labels",
        "last_scrape", "last_error"}]``, ``health`` being ``up``, ``down`` or ``unknown``."""
        data = self._call(lambda: self._conn.get_targets(state="active"))
        return [{"job": t.get("scrapePool", ""), "url": t.get("scrapeUrl", ""),
                 "health": t.get("health", "unknown"), "labels": dict(t.get("labels", {})),
                 "last_scrape": t.get("lastScrape", ""), "last_error": t.get("lastError", "")}
                for t in data.get("activeTargets", [])]
