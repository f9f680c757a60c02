"""Every manifest in ``manifests/`` validates as a cluster would take it, and the nightly job's
objects fit together.

- Built-in kinds: ``kubernetes-validate`` in strict mode (unknown fields fail, as with
  ``kubectl --validate=strict``) for Kubernetes 1.30 and the newest version it ships.
- CRD kinds (Istio's DestinationRule, VirtualService, EnvoyFilter, Telemetry; meshlab's own
  LabCluster): ``tests/kube/crd_schemas/<kind>.json``, Istio's published CRD schemas pruned to
  the fields the manifests use (each file says its source), with ObjectMeta from the Kubernetes
  schemas and the CEL rules (``x-kubernetes-validations``) they carry evaluated in Python.
- A kind with neither is skipped with the reason of :data:`SKIP_REASONS` (none today);
  ``-rs`` in pyproject shows the reasons in the summary.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource
from typer.testing import CliRunner

from meshlab.cli import app
from meshlab.envs.kube.guardrails import check_namespace
from meshlab.envs.kube.settings import settings_from_dict
from meshlab.envs.manifest_sets import DEFAULT_MANIFESTS, OVERLAYS_ROOT
from meshlab.manifests.loader import load_topology

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SCHEMAS = Path(__file__).with_name("crd_schemas")
NIGHTLY = MANIFESTS / "nightly"
WORKFLOW = ROOT / "docs" / "examples" / "nightly-github-actions.yml"
K8S_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
#: Kinds validated by no schema, with the reason printed in the skip.
SKIP_REASONS: dict[str, str] = {}
_OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/" \
               "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_DURATION = re.compile(r"^(\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text()):
            if body:
                name = (body.get("metadata") or {}).get("name", "?")
                docs.append((f"{path.relative_to(MANIFESTS)}:{body.get('kind')}/{name}", body))
    return docs


DOCS = _documents()


def duration_s(text: Any) -> float | None:
    """A Go/CEL duration (``1.5s``, ``100ms``, ``1h30m``) in seconds, or None if malformed."""
    if not isinstance(text, str) or not text:
        return None
    total, rest = 0.0, text
    while rest:
        m = _DURATION.match(rest)
        if m is None:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(3)]
        rest = rest[m.end():]
    return total


def _at_most_one(*keys: str):
    return lambda v: sum(k in v for k in keys) <= 1


#: The CEL rules Istio's CRDs put on the fields used, as Python checks of ``self``.
CEL_RULES = {
    "duration(self) >= duration('1ms')": lambda v: (duration_s(v) or 0) >= 1e-3,
    '!self.contains("*")': lambda v: "*" not in v,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        _at_most_one("workloadSelector", "targetRefs"),
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + "
    "(has(self.targetRefs) ? 1 : 0) <= 1": _at_most_one("selector", "targetRef", "targetRefs"),
    'has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : '
    '!has(self.waypoint)) : !has(self.waypoint)':
        lambda v: ("waypoint" in v) == (v.get("context") == "WAYPOINT"),
}


def _cel(validator: Any, rules: list[dict[str, str]], instance: Any, schema: dict) -> Any:
    for rule in rules:
        check = CEL_RULES.get(rule["rule"])
        if check is None:
            yield jsonschema.ValidationError(f"CEL rule not evaluated by this test (add it to "
                                             f"CEL_RULES): {rule['rule']}")
        elif not check(instance):
            yield jsonschema.ValidationError(f"{rule['message']} ({rule['rule']}): {instance!r}")


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("ipv4-cidr", raises=ValueError)
def _ipv4_cidr(value: object) -> bool:
    import ipaddress

    return not isinstance(value, str) or bool(ipaddress.IPv4Network(value))


_CrdValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                             {"x-kubernetes-validations": _cel})


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """``{(apiVersion, kind): whole-document JSON schema}`` from ``crd_schemas/*.json``."""
    out = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        crd = yaml.safe_load(path.read_text())
        api_versions = [f"{crd['group']}/{v}" for v in crd["versions"]]
        schema = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                  "additionalProperties": False,
                  "properties": {"apiVersion": {"enum": api_versions},
                                 "kind": {"const": crd["kind"]}, "metadata": {"$ref": _OBJECT_META},
                                 "spec": crd["spec"]}}
        for api in api_versions:
            out[(api, crd["kind"])] = schema
    return out


@cache
def _registry(version: str) -> Registry:
    full = next(v for v in kubernetes_validate.utils.all_versions() if v.startswith(f"{version}."))
    defs = resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema", f"v{full}-local-strict", "_definitions.json")
    return Resource.from_contents(json.loads(defs.read_text())) @ Registry()


def validate(body: dict[str, Any], version: str) -> str:
    """Validate one document; returns which schema did it.

    Raises:
        jsonschema.ValidationError: the document does not validate.
    """
    schema = crd_schemas().get((body.get("apiVersion"), body.get("kind")))
    if schema is not None:
        _CrdValidator(schema, registry=_registry(version), format_checker=_FORMATS).validate(body)
        return "crd_schemas"
    try:
        kubernetes_validate.validate(body, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.skip(SKIP_REASONS.get(body.get("kind", ""), f"no schema: {exc.message}"))
    return "kubernetes-validate"


def _schema_id(body: dict[str, Any]) -> str:
    return "crd" if (body.get("apiVersion"), body.get("kind")) in crd_schemas() else "k8s"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("body", [b for _, b in DOCS],
                         ids=[f"{_schema_id(b)}:{i}" for i, b in DOCS])
def test_manifest_validates(body, version):
    """Test ids say which schema: ``k8s`` (kubernetes-validate) or ``crd`` (crd_schemas/)."""
    validate(body, version)


def test_every_kind_has_a_schema_or_a_stated_reason():
    kinds = {(b["apiVersion"], b["kind"]) for _, b in DOCS}
    unknown = sorted(k for k in kinds - set(crd_schemas()) if k[1] not in SKIP_REASONS
                     and _builtin_missing(*k))
    assert not unknown, f"no schema and no SKIP_REASONS entry for {unknown}"
    assert {k for _, k in kinds} >= {"DestinationRule", "VirtualService", "EnvoyFilter",
                                     "Telemetry", "LabCluster", "CronJob", "Role"}


def _builtin_missing(api_version: str, kind: str) -> bool:
    try:
        kubernetes_validate.validate({"apiVersion": api_version, "kind": kind}, K8S_VERSIONS[0])
    except kubernetes_validate.SchemaNotFoundError:
        return True
    except kubernetes_validate.ValidationError:
        pass
    return False


@pytest.mark.parametrize("bad,message", [
    ({"spec": {"host": "x", "trafficPolicy": {"connectionPool": {"tcp": {"tcpKeepalive": {
        "time": "0s"}}}}}}, "greater than 1ms"),
    ({"spec": {"host": "x", "trafficPolicy": {"connectionPool": {"tcp": {"idleTimout": "1s"}}}}},
     "idleTimout"),
    ({"spec": {"host": "x"}, "metadata": {"name": "x", "labelz": {}}}, "labelz"),
])
def test_crd_schema_rejects_what_the_api_server_would(bad, message):
    body = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "x"}, **bad}
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate(body, K8S_VERSIONS[0])


def test_duration_parser_follows_go_syntax():
    assert duration_s("1h30m") == 5400 and duration_s("100ms") == pytest.approx(0.1)
    assert duration_s("1.5s") == 1.5 and duration_s("0") is None and duration_s("5") is None


@pytest.mark.parametrize("body", [b for _, b in DOCS if b["kind"] in ("StatefulSet", "Deployment")],
                         ids=[i for i, b in DOCS if b["kind"] in ("StatefulSet", "Deployment")])
def test_proxy_config_annotation_is_a_stats_matcher(body):
    """``proxy.istio.io/config`` is ProxyConfig YAML; meshlab sets proxyStatsMatcher, whose
    regexps must compile and include tcp_stats (ENVOY.md §3; the book's matcher), and may set
    ``proxyMetadata`` (a map of strings, e.g. ``ISTIO_META_DNS_CAPTURE: "true"``)."""
    raw = body["spec"]["template"]["metadata"].get("annotations", {}).get("proxy.istio.io/config")
    if raw is None:
        assert body["spec"]["template"]["metadata"]["annotations"][
            "sidecar.istio.io/inject"] == "false"
        return
    cfg = yaml.safe_load(raw)
    assert set(cfg) - {"proxyMetadata"} == {"proxyStatsMatcher"}
    assert all(isinstance(v, str) for v in (cfg.get("proxyMetadata") or {}).values())
    matcher = cfg["proxyStatsMatcher"]
    assert set(matcher) <= {"inclusionPrefixes", "inclusionSuffixes", "inclusionRegexps"}
    regexps = [re.compile(r) for r in matcher.get("inclusionRegexps", [])]
    assert any(r.fullmatch("cluster.outbound|8080||x.mark.svc.cluster.local;.tcp_stats.cx_rtt_us")
               for r in regexps)


def _suite_overlay_sets() -> list[list[str]]:
    sets = []
    for path in sorted((ROOT / "suites").glob("test_*.py")):
        for m in re.finditer(r"meshlab_lab\(overlays=\[([^\]]*)\]\)", path.read_text()):
            sets.append(re.findall(r'"([^"]+)"', m.group(1)))
    used = {o for s in sets for o in s}
    return sets + [[p.name] for p in sorted(OVERLAYS_ROOT.iterdir()) if p.name not in used]


@pytest.mark.parametrize("overlays", _suite_overlay_sets(), ids="+".join)
def test_local_env_still_loads_the_lab_with_each_overlay(overlays):
    topo = load_topology([DEFAULT_MANIFESTS, *(OVERLAYS_ROOT / o for o in overlays)])
    assert topo.workloads


def _nightly() -> dict[str, dict[str, Any]]:
    return {f"{b['kind']}/{b['metadata']['name']}": b
            for path in sorted(NIGHTLY.glob("*.yaml"))
            for b in yaml.safe_load_all(path.read_text()) if b}


def test_nightly_settings_load_and_pass_the_namespace_guardrail():
    objs = _nightly()
    settings = settings_from_dict(yaml.safe_load(
        objs["ConfigMap/meshlab-kube-settings"]["data"]["kube.yaml"]), "nightly ConfigMap")
    check_namespace(settings)
    assert f"Namespace/{settings.namespace}" in objs
    assert objs["Role/meshlab-lab-runner"]["metadata"]["namespace"] == settings.namespace
    named = next(r["resourceNames"] for r in objs["ClusterRole/meshlab-nightly"]["rules"]
                 if r["resources"] == ["namespaces"])
    assert sorted(named) == sorted(settings.allowed_namespaces)
    runner_ns = objs["CronJob/meshlab-nightly"]["metadata"]["namespace"]
    assert runner_ns not in settings.allowed_namespaces


def test_nightly_rbac_is_the_least_the_kube_env_needs():
    objs = _nightly()
    rules = [r for kind in ("Role/meshlab-lab-runner", "ClusterRole/meshlab-nightly")
             for r in objs[kind]["rules"]]
    assert not any("*" in r.get(f, []) for r in rules for f in ("apiGroups", "resources", "verbs"))
    granted = {(g, res) for r in objs["Role/meshlab-lab-runner"]["rules"]
               for g in r["apiGroups"] for res in r["resources"]}
    assert granted == {("", "pods"), ("", "pods/exec"), ("", "pods/log"), ("", "pods/portforward"),
                       ("", "pods/ephemeralcontainers"), ("", "services"), ("", "events"),
                       ("apps", "statefulsets"), ("apps", "deployments"), ("batch", "jobs"),
                       ("networking.istio.io", "destinationrules"),
                       ("networking.istio.io", "virtualservices"),
                       ("networking.istio.io", "envoyfilters"),
                       ("telemetry.istio.io", "telemetries")}
    cluster = objs["ClusterRole/meshlab-nightly"]["rules"]
    assert {(tuple(r["resources"]), tuple(r["verbs"])) for r in cluster} == {
        (("nodes",), ("get", "list", "watch")), (("namespaces",), ("get", "patch"))}
    assert all(r.get("resourceNames") for r in cluster if r["resources"] == ["namespaces"])
    for binding in ("RoleBinding/meshlab-lab-runner", "ClusterRoleBinding/meshlab-nightly"):
        assert objs[binding]["subjects"] == [{"kind": "ServiceAccount", "name": "meshlab-nightly",
                                              "namespace": "meshlab-system"}]


def _run_options() -> str:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_nightly_cronjob_runs_the_cli_with_its_volumes():
    objs = _nightly()
    pod = objs["CronJob/meshlab-nightly"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "meshlab-nightly"
    container = pod["containers"][0]
    argv = container["command"] + container["args"]
    assert argv[:4] == ["meshlab", "run", "suites/", "--env"]
    help_text = _run_options()
    for opt in (a for a in argv if a.startswith("--")):
        assert opt in help_text, f"meshlab run has no option {opt}"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    settings_path = Path(argv[argv.index("--kube-config") + 1])
    assert str(settings_path.parent) == mounts["settings"]
    assert volumes["settings"]["configMap"]["name"] == "meshlab-kube-settings"
    assert settings_path.name in objs["ConfigMap/meshlab-kube-settings"]["data"]
    assert argv[argv.index("--reports") + 1] == mounts["reports"]
    assert volumes["reports"]["persistentVolumeClaim"]["claimName"] == "meshlab-reports"
    assert "PersistentVolumeClaim/meshlab-reports" in objs


def test_workflow_example_runs_the_suites_and_carries_reports_over():
    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = flow["jobs"]["chaos"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "meshlab run suites/ --env kube --kube-config" in runs and "--reports reports" in runs
    uses = {s.get("uses", "").split("@")[0]: s for s in steps}
    download, upload = uses["actions/download-artifact"], uses["actions/upload-artifact"]
    assert download["with"]["name"] == upload["with"]["name"]
    assert download["with"]["path"] == "reports" and upload["with"]["path"] == "reports/"
    assert upload["if"] == "always()"
    for opt in ("--env", "--kube-config", "--reports"):
        assert opt in _run_options()
