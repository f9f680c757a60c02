"""Circuit breakers: the resource manager's counts and gauges (sans-IO) and the pending queue
with real sockets in a private netns (no sleeps: the test drives each step)."""

import asyncio

import pytest
from _private_netns import run_in_private_netns

from meshlab.proxy.config.policy import ISTIO_UNLIMITED, CircuitBreakers, ClusterPolicy
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.stats.metrics import ProxyStats
from meshlab.proxy.stats.store import StatsMatcher, StatsStore
from meshlab.proxy.upstream.circuit import ClusterResources, Overflow
from meshlab.proxy.upstream.pool import ConnectionPool

P = "cluster.c;."
CB = f"{P}circuit_breakers."


def _res(**kw) -> tuple[ClusterResources, StatsStore]:
    store = StatsStore(StatsMatcher(include_all=True))
    return ClusterResources(CircuitBreakers(**kw), store, P), store


def test_istio_defaults_show_unlimited_remaining_and_closed_breakers():
    _, store = _res()
    for r in ("cx", "pending", "rq", "retries"):
        assert store.value(f"{CB}default.remaining_{r}") == ISTIO_UNLIMITED
    for g in ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open"):
        assert store.value(f"{CB}default.{g}") == 0
        assert store.value(f"{CB}high.{g}") == 0
    assert store.get(f"{CB}high.remaining_cx") is None  # Istio tracks only default priority


def test_requests_and_retries_overflow():
    res, store = _res(max_requests=1, max_retries=1)
    res.attach()
    assert store.value(f"{CB}default.rq_open") == 1
    assert store.value(f"{CB}default.remaining_rq") == 0
    with pytest.raises(Overflow) as err:
        res.attach()
    assert err.value.reason is ResetReason.OVERFLOW
    assert store.value(f"{P}upstream_rq_pending_overflow") == 1  # Envoy charges this one
    res.request_done()
    assert store.value(f"{CB}default.rq_open") == 0
    assert res.try_retry() and not res.try_retry()
    assert store.value(f"{P}upstream_rq_retry_overflow") == 1
    assert store.value(f"{CB}default.rq_retry_open") == 1
    res.retry_done()
    assert store.value(f"{CB}default.remaining_retries") == 1


async def _pending_queue() -> dict:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    ep = server.sockets[0].getsockname()[:2]
    stats = ProxyStats(StatsStore(StatsMatcher(include_all=True)))
    cstats = stats.cluster("c")
    res = ClusterResources(CircuitBreakers(max_connections=1, max_pending_requests=1),
                           stats.store, cstats.prefix)
    pool, policy = ConnectionPool(), ClusterPolicy()
    c1, reused1 = await pool.acquire(ep, None, 2.0, cstats, policy=policy, limits=res)
    second = asyncio.ensure_future(pool.acquire(ep, None, 2.0, cstats, policy=policy,
                                                limits=res))
    for _ in range(100):  # let it reach the queue
        await asyncio.sleep(0)
        if res.pending.count:
            break
    out = {"reused1": reused1, "pending": res.pending.count,
           "cx_overflow": res.cx_overflow.value}
    try:
        await pool.acquire(ep, None, 2.0, cstats, policy=policy, limits=res)
    except Overflow as exc:
        out["third"] = exc.which
    c1.end_request()
    pool.park(c1, None)  # what release() does after a keep-alive exchange: handed over
    c2, reused2 = await asyncio.wait_for(second, 5)
    out.update(same=c2 is c1, reused2=reused2, cx_open=res.connections.count,
               rq=res.requests.count, pending_after=res.pending.count,
               created=pool.created, pending_overflow=res.pending_overflow.value)
    c2.close()
    out["cx_after_close"] = res.connections.count
    server.close()
    return out


def test_pending_queue_with_one_connection():
    out = run_in_private_netns(lambda: asyncio.run(_pending_queue()))
    assert out == {"reused1": False, "pending": 1, "cx_overflow": 1,
                   "third": "max_pending_requests", "same": True, "reused2": True,
                   "cx_open": 1, "rq": 1, "pending_after": 0, "created": 1,
                   "pending_overflow": 1, "cx_after_close": 0}
