"""``dns-error`` on the kube env: a Chaos Mesh DNSChaos object, printed in a dry run (nothing
sent), deleted by its label on revert; what DNSChaos cannot express, and a cluster without its
CRD, are refused with the reason."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import test_kube_network_faults as network_faults

from meshlab.errors import ConfigError
from meshlab.faults import dns_chaos
from meshlab.faults.dns_error import DnsError

NS = network_faults.NS
env = network_faults.env  # the dry-run kube env fixture (nothing is sent)


def test_servfail_prints_a_dnschaos_object_and_its_deletion(env):
    fault = DnsError(patterns=["fortio-server-l2.*"], action="servfail", max_duration_s=60)
    out = env.api.out
    start = len(out.getvalue())
    assert "DNSChaos/meshlab-dns-error-" in fault.inject(env)
    fault.revert(env)
    printed = out.getvalue()[start:]
    for text in ("kind: DNSChaos", "apiVersion: chaos-mesh.org/v1alpha1", "action: error",
                 "- fortio-server-l2.*", f"- {NS}", "duration: 60s"):
        assert text in printed, text
    # YAML quotes a label value that would read as a number (an all-digit or 1e5-like id)
    assert re.search(rf"meshlab.io/fault: '?{fault.fault_id}'?\n", printed), printed


@pytest.mark.parametrize("params,field", [({"action": "nxdomain"}, "action"),
                                          ({"action": "timeout"}, "action"),
                                          ({"probability_pct": 50}, "probability_pct")])
def test_what_dnschaos_cannot_do_is_refused_and_nothing_printed(env, params, field):
    out = env.api.out
    start = len(out.getvalue())
    with pytest.raises(ConfigError, match=f"dns-error: {field}: .*kube env"):
        DnsError(patterns=["x.*"], **params).inject(env)
    assert out.getvalue()[start:] == ""


def test_a_cluster_without_the_crd_is_refused():
    class NotServed:
        dry_run = False

        class custom:  # stands for CustomObjectsApi
            @staticmethod
            def get_api_resources(group, version):
                raise RuntimeError("404 Not Found")

    cluster = SimpleNamespace(name="kube", api=NotServed(), namespace=NS)
    with pytest.raises(ConfigError, match="no Chaos Mesh DNSChaos kind"):
        DnsError(patterns=["x.*"]).inject(cluster)
    served = SimpleNamespace(dry_run=False, custom=SimpleNamespace(
        get_api_resources=lambda g, v: SimpleNamespace(
            resources=[SimpleNamespace(name="dnschaos")])))
    assert dns_chaos.served(served)
