"""ResponseFlagsCount and OnlyResponseFlags over synthetic sidecar data."""

from __future__ import annotations

import pytest

from meshlab.checks import OnlyResponseFlags, ResponseFlagsCount
from meshlab.errors import ConfigError

L2 = "outbound|8080||fortio-server-l2.mark.svc.cluster.local"


def journal():
    return {"sidecars": {
        "fortio-server-0": {"response_flags": {L2: {"-": 950, "UF": 45, "UF,URX": 3},
                                               "inbound|8080||": {"-": 998}}},
        "fortio-client-0": {"response_flags": {"outbound|8080||fortio-server": {"-": 998}}},
    }}


def test_count_sums_clusters_and_combined_flags():
    verdict = ResponseFlagsCount("fortio-server-0", flag="UF", at_least=1).evaluate(journal())

    assert verdict.passed and verdict.observed == "48 UF"
    assert verdict.message == ("count of response flag 'UF' on sidecar 'fortio-server-0' "
                               "(all clusters) is 48, expected >= 1 UF")


def test_count_on_one_cluster_fails_above_at_most():
    verdict = ResponseFlagsCount("fortio-server-0", cluster=L2, flag="URX",
                                 at_most=0).evaluate(journal())

    assert not verdict.passed
    assert verdict.subject == f"fortio-server-0 {L2}"
    assert verdict.message == (f"count of response flag 'URX' on sidecar 'fortio-server-0' "
                               f"(cluster '{L2}') is 3, expected <= 0 URX")


def test_absent_flag_counts_zero_and_range_bounds():
    check = ResponseFlagsCount("fortio-client-0", flag="UC", at_least=1, at_most=5)
    verdict = check.evaluate(journal())
    assert not verdict.passed and verdict.expected == "between 1 and 5 UC"
    assert ResponseFlagsCount("fortio-client-0", flag="UC", at_most=0).evaluate(
        journal()).passed


def test_missing_pod_or_cluster_is_a_failed_verdict():
    no_pod = ResponseFlagsCount("ghost-0", at_most=0).evaluate(journal())
    no_cluster = ResponseFlagsCount("fortio-client-0", cluster="outbound|9|x",
                                    at_most=0).evaluate(journal())
    nothing = ResponseFlagsCount("ghost-0", at_most=0).evaluate({})

    assert not no_pod.passed and no_pod.observed == "missing"
    assert "no sidecar data for pod 'ghost-0' (pods: fortio-client-0, fortio-server-0)" \
        in no_pod.message
    assert not no_cluster.passed and "no cluster 'outbound|9|x'" in no_cluster.message
    assert not nothing.passed and "no sidecars collected" in nothing.message


def test_count_needs_a_bound():
    with pytest.raises(ConfigError, match="at_least=, at_most= or both"):
        ResponseFlagsCount("p")
    with pytest.raises(ConfigError, match="greater than"):
        ResponseFlagsCount("p", at_least=3, at_most=1)


def test_only_flags_passes_for_a_clean_sidecar():
    verdict = OnlyResponseFlags("fortio-client-0").evaluate(journal())
    assert verdict.passed and verdict.expected == "only -"


def test_only_flags_lists_every_offender_across_sidecars():
    verdict = OnlyResponseFlags().evaluate(journal())

    assert not verdict.passed and verdict.subject == "all sidecars"
    assert verdict.message == (
        f"48 responses on all sidecars carry flags outside {{-}}: "
        f"UF=45 on fortio-server-0 {L2}; UF,URX=3 on fortio-server-0 {L2}")


def test_only_flags_with_a_wider_allowed_set():
    assert not OnlyResponseFlags(allowed={"-", "UF"}).evaluate(journal()).passed  # URX remains
    assert OnlyResponseFlags(allowed={"-", "UF", "URX"}).evaluate(journal()).passed


def test_only_flags_missing_data_fails():
    assert "no sidecars collected" in OnlyResponseFlags().evaluate({}).message
    verdict = OnlyResponseFlags("ghost-0").evaluate(journal())
    assert not verdict.passed and "no sidecar data for pod 'ghost-0'" in verdict.message
    bare = OnlyResponseFlags("p").evaluate({"sidecars": {"p": {}}})
    assert not bare.passed and "no response_flags collected for pod 'p'" in bare.message


def test_only_flags_rejects_a_string_for_allowed():
    with pytest.raises(ConfigError):
        OnlyResponseFlags(allowed="-")
    assert repr(OnlyResponseFlags("p", allowed={"-"})) == (
        "OnlyResponseFlags(pod='p', allowed=frozenset({'-'}))")
