"""Response flags tell which hop failed (seed articles 003/004, DESIGN.md §5.6).

- The app's own ``?status=503`` is relayed by both sidecars with flag ``-``: a 503 from the app.
- L2 refusing connections makes L1's sidecar fail to connect: Istio's default retry policy
  (2 retries on connect-failure) is exhausted and L1's outbound logs 503 ``UF,URX`` while L1's
  inbound (the app relaying that 503) logs ``-``: a 503 made by the mesh, on the L1→L2 hop.
  A request that lands on a connection pooled before the fault gets a RST instead: ``UC``
  (Istio's outbound retry policy does not retry resets), at most once per pooled connection.
"""

from meshlab import RejectConnections, ResponseFlagsCount, Run

L1, L2 = "fortio-server", "fortio-server-l2"  # workloads, and the Services in front of them
L1_PROXY_PORT, L2_PORT = 8070, 8080  # L1's app proxies (-M) to L2's echo


def test_app_503_passes_with_no_flag(meshlab_run: Run) -> None:
    """``status=503`` from L2's app: 503s at the client, flag ``-`` on every hop."""
    lab = meshlab_run.names
    l1, l2, l2_cluster = lab.pod(L1), lab.pod(L2), lab.outbound_cluster(L2, L2_PORT)
    load = meshlab_run.load("app-503", lab.url(L1, L1_PROXY_PORT, "/echo?status=503"),
                            users=2, duration_s=2, max_requests=50)
    assert load.status_counts.get("503", 0) == load.requests > 0
    meshlab_run.check(
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="-", at_least=load.requests),
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="UF", at_most=0),
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="URX", at_most=0),
        ResponseFlagsCount(l2, cluster=lab.inbound_cluster(L2_PORT), flag="-",
                           at_least=load.requests),
    )
    codes = {r["response_code"] for r in meshlab_run.records(l2)}
    assert codes == {503}


def pooled_connections(meshlab_run: Run, pod: str, peer: str, port: int) -> list[str]:
    """ESTAB connections from ``pod`` to ``peer:port`` (the sidecar's upstream pool): ss's
    lines, one per connection."""
    peer_ip = meshlab_run.pod(peer).ip
    res = meshlab_run.shell(pod).run(
        ["ss", "-Htn", "state", "established", "dst", f"{peer_ip}:{port}"])
    return res.stdout.splitlines()


def test_unreachable_l2_gives_uf_urx_at_l1_outbound(meshlab_run: Run) -> None:
    """L2 refuses connections on 8080: L1's outbound logs ``UF,URX`` 503s (``UC`` once per
    connection pooled before the fault); L1's inbound relays the 503 with ``-``; L2 logs
    nothing."""
    lab = meshlab_run.names
    l1, l2, l2_cluster = lab.pod(L1), lab.pod(L2), lab.outbound_cluster(L2, L2_PORT)
    url = lab.url(L1, L1_PROXY_PORT, "/echo")
    meshlab_run.load("warm-pool", url, users=2, duration_s=2, max_requests=10)
    pooled_lines = pooled_connections(meshlab_run, l1, l2, L2_PORT)  # before the fault
    with meshlab_run.fault(RejectConnections(target=l2, port=L2_PORT)):
        load = meshlab_run.load("l2-refused", url, users=2, duration_s=3, max_requests=20)
    pooled = len(pooled_lines)
    assert load.requests == 20 and load.status_counts.get("503", 0) == load.requests
    meshlab_run.check(
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="UF", at_least=20 - pooled),
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="URX", at_least=20 - pooled),
        ResponseFlagsCount(l1, cluster=l2_cluster, flag="UC", at_most=pooled),
        ResponseFlagsCount(l1, cluster=lab.inbound_cluster(L1_PROXY_PORT), flag="-",
                           at_least=30),
    )
    out = [r for r in meshlab_run.records(l1) if r.get("upstream_cluster") == l2_cluster]
    assert [r["response_code"] for r in out[-20:]] == [503] * 20
    assert {r["response_flags"] for r in out[-20:]} <= {"UF,URX", "UC"}
    assert len(meshlab_run.records(l2)) == 10  # only the warm-up reached L2
