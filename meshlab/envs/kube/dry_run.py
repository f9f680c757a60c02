"""``--dry-run``: the kube env's cluster facade and node transports, printing instead of sending.

:class:`DryRunApi` implements :class:`~meshlab.envs.kube.api.ClusterApi` without a connection:
every object it would create is printed as a runnable ``kubectl apply -f - <<'EOF'`` block
holding the manifest's YAML, every command as its ``kubectl`` (exec, debug, logs, delete) or
``ssh`` equivalent, one per line. Nothing is sent; the answers are plausible and empty so a
suite proceeds as far as it can: the namespace and objects it "created" exist in memory, each
workload's pods are listed Ready (``<workload>-<ordinal>``, on the node the placement chose,
with an ``istio-proxy`` container where Istio would inject one, their IP a placeholder
``<pod> IP`` in angle brackets: none is allocated), exec exits 0 with no output
(a background exec "ends at once"), logs and admin bodies are empty, the nodes listed are
those the applied pods were placed on, without labels (the node opt-in label check is skipped,
and said so) and with placeholder addresses (``<node> IP``, ``<node> pod CIDR`` in angle
brackets). Lines are written whole, also
from the collectors' threads; an argument a suite built from an unmeasured value (a
:class:`~meshlab.missing.Missing`) prints as its label.
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import yaml

from meshlab.envs.base import CommandResult
from meshlab.envs.kube.facade import kubectl_exec_argv
from meshlab.envs.kube.process import FinishedStream
from meshlab.envs.ssh_config import SshConfig
from meshlab.errors import LabError

_SIDECAR = {"name": "istio-proxy", "image": "docker.io/istio/proxyv2"}


def _injected(ns_labels: dict[str, str], template: dict[str, Any]) -> bool:
    meta = template.get("metadata") or {}
    opt = (meta.get("annotations") or {}).get("sidecar.istio.io/inject",
                                             (meta.get("labels") or {}).get(
                                                 "sidecar.istio.io/inject", ""))
    return ns_labels.get("istio-injection") == "enabled" and str(opt).lower() != "false"


def _join(argv: list[Any]) -> str:
    """``shlex.join`` of ``argv``, each argument as its ``str`` (an unmeasured one: its label)."""
    return shlex.join(str(arg) for arg in argv)


def _node_of(spec: dict[str, Any]) -> str:
    selected = (spec.get("nodeSelector") or {}).get("kubernetes.io/hostname")
    if selected:
        return str(selected)
    terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    for term in terms:
        for expr in term.get("matchExpressions") or []:
            if expr.get("values"):
                return str(expr["values"][0])
    return ""


class DryRunApi:
    """The cluster facade that prints (see the module docstring).

    Args:
        out: where to print (default: standard output).
    """

    dry_run = True
    server = "(dry-run: no API server contacted)"

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.namespaces: dict[str, dict[str, str]] = {}
        self.objects: dict[str, list[dict[str, Any]]] = {}
        self.pods: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DryRunApi(namespaces={sorted(self.namespaces)})"

    def say(self, line: str) -> None:
        """Print one line (a command or a ``#`` comment) in one write, and flush."""
        with self._lock:
            self.out.write(f"{line}\n")
            self.out.flush()

    def announce(self, line: str) -> None:
        """A step the env takes without an API call (printed as a comment)."""
        self.say(f"# {line}")

    def _manifest(self, body: dict[str, Any], namespace: str | None) -> None:
        ns = f" -n {namespace}" if namespace else ""
        text = yaml.safe_dump(body, sort_keys=False, default_flow_style=False).rstrip()
        self.say(f"kubectl apply{ns} -f - <<'EOF'\n{text}\nEOF")

    # namespaces ------------------------------------------------------------------------
    def read_namespace(self, name: str) -> dict[str, Any] | None:
        """The namespace as created in this dry run, or None."""
        if name not in self.namespaces:
            return None
        return {"metadata": {"name": name, "labels": dict(self.namespaces[name])}}

    def create_namespace(self, name: str, labels: dict[str, str]) -> None:
        """Print the Namespace manifest."""
        self._manifest({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "labels": dict(labels)}}, None)
        self.namespaces[name] = dict(labels)

    def delete_namespace(self, name: str) -> bool:
        """Print ``kubectl delete namespace``."""
        self.say(f"kubectl delete namespace {name} --wait=true --ignore-not-found")
        self.objects.pop(name, None)
        self.pods.pop(name, None)
        return self.namespaces.pop(name, None) is not None

    def patch_namespace_labels(self, name: str, labels: dict[str, str | None]) -> None:
        """Print ``kubectl label namespace``."""
        self.say(shlex.join(["kubectl", "label", "namespace", name, "--overwrite",
                             *(f"{k}-" if v is None else f"{k}={v}" for k, v in labels.items())]))
        if name in self.namespaces:
            for k, v in labels.items():
                if v is None:
                    self.namespaces[name].pop(k, None)
                else:
                    self.namespaces[name][k] = v

    # objects ---------------------------------------------------------------------------
    def delete_labelled(self, namespace: str, api_version: str, kind: str,
                        selector: str) -> list[str]:
        """Print ``kubectl delete -l``; the objects of that kind applied in this dry run go."""
        group = api_version.rpartition("/")[0]
        resource = f"{kind.lower()}.{group}" if group else kind.lower()
        self.say(f"kubectl delete -n {namespace} {resource} -l {selector} --ignore-not-found")
        gone = [o["metadata"]["name"] for o in self.objects.get(namespace, [])
                if o.get("kind") == kind]
        self.objects[namespace] = [o for o in self.objects.get(namespace, [])
                                   if o.get("kind") != kind]
        owned = gone if kind in ("StatefulSet", "Deployment") else []
        for pod in [p for p, o in self.pods.get(namespace, {}).items()
                    if o["metadata"]["ownerReferences"][0]["name"] in owned]:
            del self.pods[namespace][pod]
        return gone

    def apply(self, namespace: str, body: dict[str, Any]) -> str:
        """Print the object's manifest; a workload's pods appear Ready."""
        self._manifest(body, namespace)
        self.objects.setdefault(namespace, []).append(copy.deepcopy(body))
        if body.get("kind") in ("StatefulSet", "Deployment"):
            self._add_pods(namespace, body)
        return "created"

    def _add_pods(self, namespace: str, wl: dict[str, Any]) -> None:
        template = wl["spec"]["template"]
        containers = [{"name": c["name"], "image": c.get("image")}
                      for c in template["spec"]["containers"]]
        if _injected(self.namespaces.get(namespace, {}), template):
            containers.append(dict(_SIDECAR))
        name = wl["metadata"]["name"]
        for i in range(int(wl["spec"].get("replicas", 1))):
            self.pods.setdefault(namespace, {})[f"{name}-{i}"] = {
                "metadata": {"name": f"{name}-{i}", "namespace": namespace,
                             "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                             "ownerReferences": [{"kind": wl["kind"], "name": name}]},
                "spec": {"nodeName": _node_of(template["spec"]), "containers": containers},
                "status": {"phase": "Running", "podIP": f"<{name}-{i} IP>",
                           "conditions": [{"type": "Ready", "status": "True"}]}}

    # reads -----------------------------------------------------------------------------
    def list_nodes(self) -> list[dict[str, Any]]:
        """The nodes the applied pods were placed on (a dry run does not ask the cluster):
        no labels, placeholder addresses."""
        names = sorted({p["spec"]["nodeName"] for pods in self.pods.values()
                        for p in pods.values() if p["spec"].get("nodeName")})
        return [{"metadata": {"name": n, "labels": {}}, "spec": {"podCIDR": f"<{n} pod CIDR>"},
                 "status": {"addresses": [{"type": "InternalIP", "address": f"<{n} IP>"}]}}
                for n in names]

    def list_pods(self, namespace: str) -> list[dict[str, Any]]:
        """The pods of the workloads applied in this dry run (Ready)."""
        return [copy.deepcopy(p) for p in self.pods.get(namespace, {}).values()]

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """One pod of :meth:`list_pods`.

        Raises:
            LabError: no such pod in this dry run.
        """
        try:
            return copy.deepcopy(self.pods[namespace][name])
        except KeyError:
            raise LabError(f"dry-run: no pod {namespace}/{name} was applied") from None

    def list_services(self, namespace: str) -> list[dict[str, Any]]:
        """The Services applied in this dry run; none has a ClusterIP allocated, so one that
        names none gets the placeholder ``<service> ClusterIP`` (in angle brackets)."""
        services = [copy.deepcopy(o) for o in self.objects.get(namespace, [])
                    if o.get("kind") == "Service"]
        for svc in services:
            spec = svc.setdefault("spec", {})
            spec.setdefault("clusterIP", f"<{svc['metadata']['name']} ClusterIP>")
        return services

    def list_events(self, namespace: str, name: str | None = None) -> list[dict[str, Any]]:
        """No events."""
        return []

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        """Print ``kubectl logs``; the log is empty."""
        self.say(f"kubectl logs -n {namespace} {pod} -c {container}")
        return ""

    # streams ---------------------------------------------------------------------------
    def delete_pod(self, namespace: str, name: str, grace_s: float) -> None:
        """Print ``kubectl delete pod``; the pod stays in this dry run (its StatefulSet would
        recreate it)."""
        self.say(shlex.join(["kubectl", "delete", "pod", "-n", namespace, name,
                             f"--grace-period={round(grace_s)}", "--wait=false"]))

    def resize_pod(self, namespace: str, name: str, container: str,
                   limits: dict[str, str | None]) -> None:
        """Print ``kubectl patch --subresource resize``."""
        body = {"spec": {"containers": [{"name": container, "resources": {"limits": limits}}]}}
        self.say(shlex.join(["kubectl", "patch", "pod", "-n", namespace, name,
                             "--subresource", "resize", "--patch", json.dumps(body)]))

    def add_ephemeral_container(self, namespace: str, pod: str,
                                container: dict[str, Any]) -> None:
        """Print the ``kubectl debug`` equivalent; the container is running from now on."""
        self.say(shlex.join(["kubectl", "debug", "-n", namespace, pod,
                             f"--image={container['image']}", f"--container={container['name']}",
                             f"--target={container.get('targetContainerName', '')}",
                             "--profile=netadmin", "--", *container.get("command", [])]))
        obj = self.pods.get(namespace, {}).get(pod)
        if obj is not None:
            obj["spec"].setdefault("ephemeralContainers", []).append(dict(container))
            obj["status"].setdefault("ephemeralContainerStatuses", []).append(
                {"name": container["name"], "state": {"running": {}}})

    def exec(self, namespace: str, pod: str, container: str, argv: list[str], *,
             timeout_s: float, input_text: str | None = None) -> CommandResult:
        """Print the ``kubectl exec`` line; the command "exits 0" without output."""
        shown = kubectl_exec_argv(namespace, pod, container, argv)
        stdin = "" if input_text is None else f" <<'EOF'\n{input_text.rstrip()}\nEOF"
        self.say(_join(shown) + stdin)
        return CommandResult(argv=shown, returncode=0, stdout="", stderr="")

    def exec_stream(self, namespace: str, pod: str, container: str, argv: list[str]) -> Any:
        """Print the ``kubectl exec`` line of a background command; it "ends at once", exit 0,
        without output."""
        self.say(_join(kubectl_exec_argv(namespace, pod, container, argv)))
        return FinishedStream()

    def port_forward_http(self, namespace: str, pod: str, port: int, method: str, path: str, *,
                          timeout_s: float) -> tuple[int, str]:
        """Print the port-forward and the request; the answer is 200 with an empty body."""
        self.say(f"kubectl port-forward -n {namespace} pod/{pod} {port}:{port} & " + shlex.join(
            ["curl", "-sS", "-X", method, f"http://127.0.0.1:{port}{path}"]))
        return 200, ""


class PrintShell:
    """A node Shell that prints ``ssh <user>@<host> <argv>`` instead of running it.

    Args:
        api: the dry-run facade (printer).
        ssh: the SSH settings (hosts, user).
        node: the cluster node.
    """

    dry_run = True

    def __init__(self, api: DryRunApi, ssh: SshConfig, node: str) -> None:
        self.api, self.ssh, self.node, self.name = api, ssh, node, node
        self.prefix = ["ssh", f"{ssh.user}@{ssh.host(node)}"]

    def __repr__(self) -> str:
        return f"PrintShell(node={self.node!r})"

    def run(self, argv: list[str], *, check: bool = True, timeout_s: float = 60.0,
            input_text: str | None = None) -> CommandResult:
        """Print the ssh line; "exit 0", no output."""
        shown = [*self.prefix, *argv]
        self.api.say(_join(shown))
        return CommandResult(argv=shown, returncode=0, stdout="", stderr="")

    def popen(self, argv: list[str], *, stdout: Path | None = None, stderr: Path | None = None,
              user: str | None = None) -> Any:
        """Not supported (as over SSH).

        Raises:
            LabError: always.
        """
        raise LabError(f"dry-run: background processes on node {self.node} are not supported")


class DryRunNodeDriver:
    """A NodeDriver that prints the power commands (power-off on the node over SSH, power-on
    on the runner) and remembers which nodes it "switched off".

    Args:
        api: the dry-run facade (printer).
        ssh: the SSH settings.
    """

    def __init__(self, api: DryRunApi, ssh: SshConfig) -> None:
        self.api, self.ssh = api, ssh
        self.off: set[str] = set()

    def __repr__(self) -> str:
        return f"DryRunNodeDriver(off={sorted(self.off)})"

    def power_off(self, node: str) -> str:
        """Print the power-off command."""
        argv = ["ssh", f"{self.ssh.user}@{self.ssh.host(node)}",
                *self.ssh.command(self.ssh.power_off_command, node)]
        self.api.say(shlex.join(argv))
        self.off.add(node)
        return f"{node}: dry-run: {shlex.join(argv)}"

    def power_on(self, node: str) -> str:
        """Print the runner-side power-on command (or say none is configured)."""
        self.off.discard(node)
        if self.ssh.power_on_command is None:
            self.api.announce(f"power_on_command not configured: {node} cannot be powered on")
            return f"{node}: dry-run: no power_on_command"
        argv = self.ssh.command(self.ssh.power_on_command, node)
        self.api.say(shlex.join(argv))
        return f"{node}: dry-run: {shlex.join(argv)}"

    def is_up(self, node: str) -> bool:
        """False only between this dry run's power-off and power-on of ``node``."""
        self.ssh.host(node)
        return node not in self.off
