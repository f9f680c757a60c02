"""Settings of the kube env: which cluster, which namespace, the guardrails, Prometheus, SSH.

Read from a YAML file (``--meshlab-kube-config`` / ``meshlab run --kube-config``), e.g.::

    namespace: meshlab-lab                 # the dedicated namespace the lab is applied into
    allowed_namespaces: [meshlab-lab]      # guardrail: the only namespaces meshlab may touch
    kubeconfig: ~/.kube/config             # default: $KUBECONFIG / ~/.kube/config / in-cluster
    context: chaos-cluster
    node_label: meshlab.io/chaos=allowed   # guardrail: nodes a lab pod or fault may touch
    node_map: {worknode5: ip-10-0-1-5, worknode6: ip-10-0-1-6}
    max_nodes: 1                           # guardrail: blast radius of one fault, in nodes
    max_pods: 10                           # guardrail: pods in the lab / pods one fault hits
    prometheus_url: http://prometheus.istio-system:9090
    ssh: {nodes: {ip-10-0-1-5: 10.0.1.5}, key_file: ~/.ssh/chaos, power_on_command: [...]}
    runner_python: /opt/meshlab/.venv/bin/python   # meshlab's interpreter in the client pod

Loads run the Locust runner (``python -m meshlab.load.locust_runner``) inside the client pod
(``netshoot``), so that pod's image must have meshlab installed: map the manifests' netshoot
image to the meshlab image (``Dockerfile``; its venv is ``/opt/meshlab/.venv``) with
``image_map`` and point ``runner_python`` at that venv's interpreter (the default does).

Every field has a default except what a cluster cannot guess; a bad value fails fast with the
file and the field named (:class:`~meshlab.errors.ConfigError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from meshlab.envs.ssh_config import SshConfig
from meshlab.errors import ConfigError

#: Labels on everything meshlab creates in a cluster (namespace, debug pods, jobs).
MANAGED_BY = {"app.kubernetes.io/managed-by": "meshlab"}
DEFAULT_NAMESPACE = "meshlab-lab"
DEFAULT_NODE_LABEL = "meshlab.io/chaos=allowed"
#: The debug image for ``ss``/``conntrack``/``iptables`` in a pod's netns (ephemeral container).
DEFAULT_DEBUG_IMAGE = "nicolaka/netshoot:v0.13"
#: meshlab's interpreter in the meshlab image (``Dockerfile``: the venv at /opt/meshlab/.venv).
DEFAULT_RUNNER_PYTHON = "/opt/meshlab/.venv/bin/python"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9_.-]{1,63}=[A-Za-z0-9_.-]{0,63}$")


@dataclass
class KubeSettings:
    """The kube env's settings (see the module docstring for the YAML form).

    Attributes:
        namespace: the dedicated namespace the lab's manifests are applied into (their own
            ``metadata.namespace`` is replaced); created labelled, deleted at teardown.
        allowed_namespaces: guardrail allow-list; ``namespace`` must be in it.
        kubeconfig: kubeconfig path; None: ``$KUBECONFIG``, ``~/.kube/config``, in-cluster.
        context: kubeconfig context; None: the current one.
        node_label: ``key=value`` every node a lab pod runs on, or a fault touches, must carry.
        node_map: lab node name (``LabCluster`` ``spec.nodes``) → cluster node name; a lab node
            not in the map must exist under its own name.
        max_nodes: guardrail: most nodes one fault may touch.
        max_pods: guardrail: most pods the lab may run and one fault may touch.
        prometheus_url: the cluster's Prometheus (queries through prometheus-api-client);
            None: Prometheus queries are skipped with a note.
        ready_timeout_s: how long ``up`` waits for every pod to be Ready.
        debug_image: image of the ephemeral debug container (NET_ADMIN) used for ``ss``,
            ``conntrack`` and ``iptables`` in a pod's netns.
        image_map: image name in the manifests → image to pull (for meshlab-only apps such as
            tcp-echo, which a cluster needs pushed to its own registry, and the client pod's
            netshoot image → the meshlab image the load runner needs).
        runner_python: the interpreter with meshlab installed in the client pod's image, which
            runs the load runner there (a path, or a name on the container's ``PATH``).
        ssh: how to reach nodes for node faults and node-netns commands (``nsenter``); None:
            node faults and node shells are refused with a reason.
        dry_run: print every manifest and command instead of touching the cluster.
        source: the file the settings came from ("" when built in code), for error messages.
    """

    namespace: str = DEFAULT_NAMESPACE
    allowed_namespaces: list[str] = field(default_factory=lambda: [DEFAULT_NAMESPACE])
    kubeconfig: str | None = None
    context: str | None = None
    node_label: str = DEFAULT_NODE_LABEL
    node_map: dict[str, str] = field(default_factory=dict)
    max_nodes: int = 1
    max_pods: int = 10
    prometheus_url: str | None = None
    ready_timeout_s: float = 300.0
    debug_image: str = DEFAULT_DEBUG_IMAGE
    image_map: dict[str, str] = field(default_factory=dict)
    runner_python: str = DEFAULT_RUNNER_PYTHON
    ssh: SshConfig | None = None
    dry_run: bool = False
    source: str = ""

    def _fail(self, name: str, problem: str) -> ConfigError:
        where = f"{self.source}: " if self.source else ""
        return ConfigError(f"{where}{name}: {problem}")

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _DNS_LABEL.match(self.namespace):
            raise self._fail("namespace", f"must be a DNS label, got {self.namespace!r}")
        if not isinstance(self.allowed_namespaces, list) or not all(
                isinstance(n, str) and _DNS_LABEL.match(n) for n in self.allowed_namespaces):
            raise self._fail("allowed_namespaces", "must be a list of DNS labels, got "
                                                   f"{self.allowed_namespaces!r}")
        if not isinstance(self.node_label, str) or not _LABEL.match(self.node_label):
            raise self._fail("node_label", f"must be key=value, got {self.node_label!r}")
        for name in ("node_map", "image_map"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and k and v
                    for k, v in value.items()):
                raise self._fail(name, f"must map names to names, got {value!r}")
        for name in ("max_nodes", "max_pods"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self._fail(name, f"must be an integer >= 1, got {value!r}")
        if isinstance(self.ready_timeout_s, bool) or not isinstance(
                self.ready_timeout_s, int | float) or self.ready_timeout_s <= 0:
            raise self._fail("ready_timeout_s", f"must be a positive number of seconds, got "
                                                f"{self.ready_timeout_s!r}")
        for name in ("kubeconfig", "context", "prometheus_url"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise self._fail(name, f"must be a non-empty string or absent, got {value!r}")
        if self.prometheus_url is not None and not self.prometheus_url.startswith(
                ("http://", "https://")):
            raise self._fail("prometheus_url", f"must be an http(s) URL, got "
                                               f"{self.prometheus_url!r}")
        if not isinstance(self.runner_python, str) or not self.runner_python or any(
                c.isspace() for c in self.runner_python):
            raise self._fail("runner_python", "must be an interpreter path without spaces, got "
                                              f"{self.runner_python!r}")
        if not isinstance(self.dry_run, bool):
            raise self._fail("dry_run", f"must be true or false, got {self.dry_run!r}")

    @property
    def node_label_pair(self) -> tuple[str, str]:
        """``node_label`` split into ``(key, value)``."""
        key, _, value = self.node_label.partition("=")
        return key, value

    def cluster_node(self, lab_node: str) -> str:
        """The cluster node name of a lab node (``node_map``, else the same name)."""
        return self.node_map.get(lab_node, lab_node)

    def to_dict(self) -> dict[str, Any]:
        """The settings as YAML-able data (``ssh`` as its fields, no socket factory); used by
        ``Env.spec()`` so a deadman can rebuild the env."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ssh"}
        if self.ssh is not None:
            out["ssh"] = {f.name: (str(v) if isinstance(v, Path) else v)
                          for f in fields(self.ssh)
                          if (v := getattr(self.ssh, f.name)) is not None
                          and f.name != "socket_factory"}
        return out


def settings_from_dict(data: Any, source: str = "", **overrides: Any) -> KubeSettings:
    """Build :class:`KubeSettings` from parsed YAML (plus keyword overrides, e.g. ``dry_run``);
    a ``source`` key (as :meth:`KubeSettings.to_dict` writes it) names the origin.

    Raises:
        ConfigError: not a mapping, an unknown key, or a bad value (file and field named).
    """
    where = f"{source}: " if source else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}must be a mapping of settings, got {type(data).__name__}")
    data = dict(data)
    source = str(data.pop("source", None) or source)  # to_dict() round-trips
    where = f"{source}: " if source else ""
    known = {f.name for f in fields(KubeSettings)} - {"source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    values = {**data, **overrides}
    ssh = values.get("ssh")
    if ssh is not None:
        if not isinstance(ssh, dict):
            raise ConfigError(f"{where}ssh: must be a mapping, got {ssh!r}")
        try:
            values["ssh"] = SshConfig(**ssh)
        except TypeError as exc:
            raise ConfigError(f"{where}ssh: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{where}ssh.{exc}") from exc
    return KubeSettings(**values, source=source)


def load_settings(path: str | Path | None, **overrides: Any) -> KubeSettings:
    """Read the settings file (None: all defaults) and apply ``overrides``.

    Raises:
        ConfigError: the file is missing, not YAML, or a setting is bad (file and field named).
    """
    if path is None:
        return settings_from_dict({}, "", **overrides)
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the kube settings: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return settings_from_dict(data, str(path), **overrides)
