"""hops.py: sidecars ordered along the request path, with the flags and codes each saw."""

from __future__ import annotations

from _journals import L1_OUT, make_journal

from meshlab.report.hops import hop_view, path_order


def test_path_runs_from_the_client_sidecar_through_l1_to_l2():
    journal = make_journal()
    journal["sidecars"]["stray-0"] = {"response_flags": {"inbound|9090||": {"-": 1}}}

    assert path_order(journal) == [("fortio-client-0", 0), ("fortio-server-0", 1),
                                   ("fortio-server-l2-0", 2), ("stray-0", None)]


def test_hop_rows_show_flags_and_codes_per_cluster_inbound_first():
    view = hop_view(make_journal())

    assert [h["role"] for h in view["hops"]] == ["client sidecar", "L1 sidecar", "L2 sidecar"]
    l1 = view["hops"][1]
    assert l1["pod"] == "fortio-server-0" and l1["node"] == "worknode5"
    inbound, outbound = l1["rows"]
    assert inbound["direction"] == "inbound" and inbound["short"] == "inbound :8080"
    assert outbound["cluster"] == L1_OUT and outbound["next"] == "fortio-server-l2-0"
    assert outbound["short"] == "→ fortio-server-l2:8080"
    assert [(c["text"], c["count"], c["bad"]) for c in outbound["flags"]] == [
        ("-", "17,850", False), ("UF", "45", True), ("UF,URX", "3", True)]
    assert [(c["text"], c["bad"]) for c in outbound["codes"]] == [("200", False), ("503", True)]
    assert outbound["bad"] and not view["hops"][2]["rows"][0]["bad"]
    poweroff = view["clients"][1]
    assert [(c["text"], c["bad"]) for c in poweroff["codes"]] == [("200", False), ("503", True)]


def test_without_loads_the_path_starts_at_sidecars_nobody_calls():
    journal = make_journal()
    journal["loads"] = []
    assert [pod for pod, _ in path_order(journal)] == [
        "fortio-client-0", "fortio-server-0", "fortio-server-l2-0"]
    assert hop_view({"sidecars": None}) is None
    assert hop_view({"sidecars": {}}) == {"clients": [], "hops": []}
