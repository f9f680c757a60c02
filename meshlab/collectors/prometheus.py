"""Named Prometheus queries over a run window, for the journal's ``prometheus`` key
(CONTRACTS.md §5).

The queries (the report reads them by name):

=============================  ============================================  ===================
name                           series                                        result labels
=============================  ============================================  ===================
``requests_total``             ``istio_requests_total{job="envoy-stats"}``   ``pod``, ``reporter``
``requests_by_response_flags`` ``istio_requests_total{job="envoy-stats"}``   ``response_flags``,
                                                                             ``reporter``, ``pod``
``sidecar_cpu_seconds``        ``process_cpu_seconds_total``                 ``pod``
                               ``{job="kubernetes-pods"}``
``sidecar_memory_bytes``       ``process_resident_memory_bytes``             ``pod``
                               ``{job="kubernetes-pods"}``
=============================  ============================================  ===================

Counters are **exact**: each series' value at the window end minus its value at the window
start (two instant queries), summed by the result labels in Python — not ``increase()``, which
extrapolates to the range edges and drops a series' first sample, so it rarely gives a whole
request count. A series missing at the start (first seen in the window, e.g. a new response
flag) counts from 0; a series lower at the end than at the start was reset (sidecar restarted,
node power cycle) and counts its end value, as ``increase()`` treats resets. The start value is
the last scrape at or before the window start; the end value comes from the first scrapes after
the window end, waited for by polling ``timestamp(up)`` of every target (:func:`wait_scraped`).
``sidecar_memory_bytes`` is ``max_over_time`` from the last scrape before the window start to
the first one after its end.

:func:`collect` never raises: an error lands in the query's ``error`` and the top ``error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshlab.envs.prometheus_api import PrometheusClient
from meshlab.errors import LabError

JOB = "envoy-stats"
"""Istio's job name for Envoy's 15090 output (request metrics)."""
AGENT_JOB = "kubernetes-pods"
"""The job scraping pilot-agent's merged 15020 output (sidecar process metrics)."""
SCRAPE_WAIT_S = 15.0
"""Least seconds :func:`collect` waits for a scrape newer than the window end (at least three
scrape intervals of the client's server, :attr:`PrometheusClient.scrape_interval_s`)."""


@dataclass(frozen=True)
class NamedQuery:
    """A query of the journal.

    Attributes:
        name: the journal name.
        selector: the PromQL series selector.
        by: labels the result is summed (or maxed) by.
        kind: ``delta`` (exact counter change over the window) or ``max`` (largest value).
    """

    name: str
    selector: str
    by: tuple[str, ...]
    kind: str = "delta"

    def promql(self, window_s: float) -> str:
        """The PromQL this query stands for (for the journal; ``delta`` is evaluated as two
        instant queries of :attr:`selector`)."""
        by = ", ".join(self.by)
        if self.kind == "max":
            return f"max by ({by}) (max_over_time({self.selector}[{_duration(window_s)}]))"
        return f"sum by ({by}) ({self.selector} @ end - {self.selector} @ start)"


QUERIES = (
    NamedQuery("requests_total", f'istio_requests_total{{job="{JOB}"}}', ("pod", "reporter")),
    NamedQuery("requests_by_response_flags", f'istio_requests_total{{job="{JOB}"}}',
               ("response_flags", "reporter", "pod")),
    NamedQuery("sidecar_cpu_seconds", f'process_cpu_seconds_total{{job="{AGENT_JOB}"}}',
               ("pod",)),
    NamedQuery("sidecar_memory_bytes", f'process_resident_memory_bytes{{job="{AGENT_JOB}"}}',
               ("pod",), kind="max"),
)


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _series_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__"))


def _grouped(values: dict[tuple[tuple[str, str], ...], float],
             by: tuple[str, ...]) -> list[dict[str, Any]]:
    sums: dict[tuple[str, ...], float] = {}
    for key, value in values.items():
        labels = dict(key)
        group = tuple(labels.get(name, "") for name in by)
        sums[group] = sums.get(group, 0.0) + value
    return [{"labels": dict(zip(by, group, strict=True)), "value": round(value, 9)}
            for group, value in sorted(sums.items())]


def counter_delta(before: list[dict[str, Any]], after: list[dict[str, Any]],
                  by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Exact change of each series between two instant-query results, summed by ``by``.

    Args:
        before: :meth:`PrometheusClient.query` result at the window start.
        after: the same selector's result after the window end.
        by: result labels.

    Returns:
        ``[{"labels": {label: value}, "value": float}]`` sorted by labels.
    """
    start = {_series_key(s["labels"]): s["value"] for s in before}
    delta = {}
    for s in after:
        key = _series_key(s["labels"])
        old = start.get(key, 0.0)
        delta[key] = s["value"] - old if s["value"] >= old else s["value"]  # reset
    return _grouped(delta, by)


def wait_scraped(client: PrometheusClient, after_epoch_s: float,
                 timeout_s: float = SCRAPE_WAIT_S) -> float:
    """Poll until every target has a scrape newer than ``after_epoch_s`` (``up`` is written at
    every scrape, also a failed one).

    Returns:
        A server time at which every target's latest sample is newer than ``after_epoch_s``.

    Raises:
        LabError: not within ``timeout_s`` (or no target at all).
    """
    from meshlab.polling import PollTimeout, wait_until

    def fresh(samples: list[dict[str, Any]]) -> bool:
        return bool(samples) and all(s["value"] > after_epoch_s for s in samples)

    try:  # polled every 0.2 s
        return max(s["t"] for s in wait_until(lambda: client.query("timestamp(up)"), fresh,
                                              timeout_s=timeout_s, every_s=0.2,
                                              what="a scrape of every target"))
    except PollTimeout:
        last = client.query("timestamp(up)")
        stale = [s["labels"].get("instance", "?") for s in last if s["value"] <= after_epoch_s]
        raise LabError(f"no scrape newer than {after_epoch_s:.3f} within {timeout_s:g} s "
                       f"(targets: {stale or 'none'})") from None


def evaluate(client: PrometheusClient, query: NamedQuery, start_epoch_s: float,
             eval_end_epoch_s: float) -> dict[str, Any]:
    """One named query over ``[start, end]``, evaluated at ``eval_end_epoch_s``: a time whose
    latest samples are newer than the window's end (:func:`wait_scraped`).

    Returns:
        ``{"name", "promql", "result": [{"labels", "value"}], "error": None}``.

    Raises:
        LabError: a query failed.
    """
    # reach one scrape interval before the start: the range holds the last sample before it
    range_s = eval_end_epoch_s - start_epoch_s + client.scrape_interval_s
    if query.kind == "max":
        result = [{"labels": {k: s["labels"].get(k, "") for k in query.by}, "value": s["value"]}
                  for s in client.query(query.promql(range_s), eval_end_epoch_s)]
        result.sort(key=lambda r: tuple(r["labels"].values()))
    else:
        result = counter_delta(client.query(query.selector, start_epoch_s),
                               client.query(query.selector, eval_end_epoch_s), query.by)
    return {"name": query.name, "promql": query.promql(range_s), "result": result,
            "error": None}


def collect(client: PrometheusClient, start_epoch_s: float, end_epoch_s: float, *,
            queries: tuple[NamedQuery, ...] = QUERIES,
            scrape_wait_s: float | None = None) -> dict[str, Any]:
    """Evaluate ``queries`` over the window; never raises.

    ``scrape_wait_s``: how long to wait for scrapes after the window end (None: the larger of
    :data:`SCRAPE_WAIT_S` and three of the server's scrape intervals).

    Returns:
        The journal's ``prometheus`` value: ``{"url", "job", "window": {"start_epoch_s",
        "end_epoch_s"}, "eval_end_epoch_s", "queries": [...], "error": str | None}``.
    """
    out: dict[str, Any] = {"url": client.url, "job": JOB,
                           "window": {"start_epoch_s": start_epoch_s, "end_epoch_s": end_epoch_s},
                           "eval_end_epoch_s": None, "queries": [], "error": None}
    try:
        if scrape_wait_s is None:
            scrape_wait_s = max(SCRAPE_WAIT_S, 3 * client.scrape_interval_s)
        eval_end = wait_scraped(client, end_epoch_s, scrape_wait_s)
        out["eval_end_epoch_s"] = eval_end
    except Exception as exc:  # noqa: BLE001 - recorded, never raised into the run
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    for query in queries:
        try:
            out["queries"].append(evaluate(client, query, start_epoch_s, eval_end))
        except Exception as exc:  # noqa: BLE001 - recorded, never raised into the run
            err = f"{type(exc).__name__}: {exc}"
            out["queries"].append({"name": query.name, "promql": query.selector,
                                   "result": [], "error": err})
            out["error"] = out["error"] or f"{query.name}: {err}"
    return out


def record(journal: Any, client: PrometheusClient, start_epoch_s: float,
           end_epoch_s: float, **kwargs: Any) -> dict[str, Any]:
    """:func:`collect` into ``journal.data["prometheus"]`` and save the journal.

    Returns:
        What was recorded.
    """
    data = collect(client, start_epoch_s, end_epoch_s, **kwargs)
    journal.data["prometheus"] = data
    journal.save()
    return data


def result_of(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The ``result`` list of the named query in a ``prometheus`` journal value ([] if absent)."""
    for query in data.get("queries", []):
        if query.get("name") == name:
            return list(query.get("result", []))
    return []
