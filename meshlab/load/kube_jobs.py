"""Distributed loads on a cluster: one Kubernetes Job per worker, the results merged exactly.

``Run.load(..., processes=N, jobs=True)`` on an env with the
:class:`~meshlab.envs.capabilities.LoadJobs` capability (the kube env; :func:`run_load_jobs`)
runs the N single-process parts of the load (:func:`meshlab.load.group.split_spec`) as N Jobs
instead of N processes in the client pod, so the load can use more CPU than one pod has. The
master is this process:

1. each worker's Job (:func:`worker_job`) is built from the client pod: its app container's
   image (the meshlab image, ``image_map``), namespace, ``nodeSelector`` (else its node, so the
   workers leave from where the client does) and tolerations; the container runs the runner
   with ``settings.runner_python`` under a small ``sh`` wrapper (:data:`PRINT_WRAPPER`) that
   prints the result JSON as the **last line of stdout** once the runner exited 0; no sidecar
   (``sidecar.istio.io/inject: "false"``: a Job with a sidecar never completes), ``restartPolicy:
   Never``, ``backoffLimit: 0``, ``activeDeadlineSeconds`` bounding it on the cluster's side and
   ``ttlSecondsAfterFinished`` as a fallback clean-up;
2. the master polls the workers' pods (label ``meshlab.io/load=<id>``) until each has
   ``Succeeded`` or ``Failed``, reads each pod's log (the pod logs API, ``kubectl logs``), takes
   its last line as the result, and deletes the Jobs (foreground: their pods go too), also on
   failure;
3. the results are merged with :func:`meshlab.load.merge.merge_results`; every part's result is
   kept beside the merged one (``<out stem>.p<i>.json``).

The workers count toward the lab's ``max_pods`` guardrail (checked by the env's
``job_placement`` before any Job is created). Not covered: background loads (``start_load``/``LoadHandle``) and early stop as Jobs;
a worker that is evicted is not retried (the load fails).
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

from meshlab.envs.capabilities import LoadJobs
from meshlab.envs.kube.facade import ClusterApi
from meshlab.envs.kube.ready import why_not_ready
from meshlab.envs.kube.settings import MANAGED_BY, KubeSettings
from meshlab.errors import LabError
from meshlab.load.driver import WAIT_MARGIN_S, LoadResult, runner_argv
from meshlab.load.group import part_path, split_spec
from meshlab.load.locust_runner import write_json_atomic as write_json
from meshlab.load.merge import merge_results
from meshlab.load.spec import LoadSpec
from meshlab.missing import dry_run_active
from meshlab.polling import PollTimeout, wait_until

WORKER_CONTAINER = "load-worker"
#: ``sh -c PRINT_WRAPPER meshlab-load-worker <result file> <runner argv...>``: run the runner,
#: then print its result file as one line after a newline (the log's last line).
PRINT_WRAPPER = 'f=$1; shift; "$@" || exit $?; echo; cat "$f"; echo'
WRAPPER_NAME = "meshlab-load-worker"
LOAD_LABEL = "meshlab.io/load"
WORKER_LABEL = "meshlab.io/load-worker"
TTL_AFTER_FINISHED_S = 600
"""Seconds a finished worker Job stays when meshlab could not delete it (Kubernetes removes it)."""
_LOG_TAIL_CHARS = 1500


def load_id(name: str) -> str:
    """A Job-name-safe id for one distributed load: ``<name slug>-<8 hex>``."""
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:30] or "load"
    return f"{slug}-{secrets.token_hex(4)}"


def worker_deadline_s(spec: LoadSpec, settings: KubeSettings) -> int:
    """Seconds a worker may take from its Job's creation: scheduling and image pull
    (``ready_timeout_s``), the load, its request timeout and the driver's margin."""
    return math.ceil(settings.ready_timeout_s + spec.duration_s + spec.timeout_s + WAIT_MARGIN_S)


def worker_job(client: dict[str, Any], settings: KubeSettings, lab: str, load: str, index: int,
               part: LoadSpec, deadline_s: int) -> dict[str, Any]:
    """The Job manifest of worker ``index`` (see the module docstring).

    Args:
        client: the client pod object (as the API returns it).
        settings: the kube settings (``runner_python``, namespace).
        lab: the lab name (label).
        load: the load's id (:func:`load_id`).
        index: the worker's number, 0-based.
        part: the worker's single-process spec.
        deadline_s: ``activeDeadlineSeconds``.
    """
    spec = client.get("spec") or {}
    app = next(c for c in spec["containers"] if c["name"] != "istio-proxy")
    result = f"/tmp/meshlab-load-{load}-{index}.json"
    labels = {**MANAGED_BY, "meshlab.io/lab": lab, LOAD_LABEL: load, WORKER_LABEL: str(index)}
    node_selector = spec.get("nodeSelector") or (
        {"kubernetes.io/hostname": spec["nodeName"]} if spec.get("nodeName") else {})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{
            "name": WORKER_CONTAINER, "image": app["image"], "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", PRINT_WRAPPER, WRAPPER_NAME, result,
                        *runner_argv(part, result, settings.runner_python)]}],
    }
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if spec.get("tolerations"):
        pod_spec["tolerations"] = list(spec["tolerations"])
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"meshlab-load-{load}-{index}", "namespace": settings.namespace,
                     "labels": labels},
        "spec": {"backoffLimit": 0, "completions": 1, "parallelism": 1,
                 "activeDeadlineSeconds": deadline_s,
                 "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
                 "template": {"metadata": {"labels": dict(labels),
                                           "annotations": {"sidecar.istio.io/inject": "false"}},
                              "spec": pod_spec}},
    }


def result_from_log(log: str, what: str) -> dict[str, Any]:
    """The result JSON on the last non-empty line of a worker's log.

    Raises:
        LabError: the last line is not a JSON object (the log's tail is in the message).
    """
    lines = [line for line in log.splitlines() if line.strip()]
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise LabError(f"{what}: no result JSON on the last line of its log: "
                       f"{log.strip()[-_LOG_TAIL_CHARS:] or '(empty log)'}")
    return data


class JobLoad:
    """One distributed load over Jobs (see the module docstring).

    Args:
        api: the cluster facade.
        settings: the kube settings.
        lab: the lab name.
        client: the client pod object.
        spec: the whole load (``processes`` = number of workers).
        out_path: the merged result's path on this machine.
        poll_s: seconds between pod status polls.
    """

    def __init__(self, api: ClusterApi, settings: KubeSettings, lab: str, client: dict[str, Any],
                 spec: LoadSpec, out_path: Path, poll_s: float = 1.0) -> None:
        self.api, self.settings, self.spec, self.poll_s = api, settings, spec, poll_s
        self.out_path = Path(out_path)
        self.id = load_id(spec.name)
        self.deadline_s = worker_deadline_s(spec, settings)
        self.jobs = [worker_job(client, settings, lab, self.id, i, part, self.deadline_s)
                     for i, part in enumerate(split_spec(spec))]

    def __repr__(self) -> str:
        return f"JobLoad(id={self.id!r}, workers={len(self.jobs)})"

    @property
    def selector(self) -> str:
        """The label selector of this load's Jobs and pods."""
        return f"{LOAD_LABEL}={self.id}"

    def run(self) -> LoadResult:
        """Create the Jobs, wait for them, collect and merge their results, delete the Jobs.

        Returns:
            The merged result; in a dry run inside :func:`meshlab.missing.dry_run_scope`,
            :meth:`~meshlab.load.result.LoadResult.not_measured` after printing.

        Raises:
            LabError: a worker failed or did not finish within its deadline (its log or its
                pod's reason is named); in a dry run outside a dry-run scope, after printing,
                since nothing ran.
        """
        ns = self.settings.namespace
        self.out_path.unlink(missing_ok=True)
        try:
            for job in self.jobs:
                self.api.apply(ns, job)
            if self.api.dry_run:
                self._print_rest()
                if dry_run_active():
                    return LoadResult.not_measured(self.spec)
                raise LabError(f"load {self.spec.name!r}: dry run: the {len(self.jobs)} worker "
                               "Jobs were printed, no result")
            parts = self._collect(self._wait())
        finally:
            self.api.delete_labelled(ns, "batch/v1", "Job", self.selector)
        for index, part in enumerate(parts):
            write_json(part_path(self.out_path, index), part)
        merged = merge_results(parts)
        write_json(self.out_path, merged)
        return LoadResult.from_dict(merged, name=self.spec.name)

    def _worker_pods(self) -> dict[int, dict[str, Any]]:
        pods = [p for p in self.api.list_pods(self.settings.namespace)
                if ((p.get("metadata") or {}).get("labels") or {}).get(LOAD_LABEL) == self.id]
        return {int(p["metadata"]["labels"][WORKER_LABEL]): p for p in pods}

    def _wait(self) -> dict[int, dict[str, Any]]:
        """Poll until every worker's pod has ended; fail at once when one failed."""
        def poll() -> tuple[dict[int, dict[str, Any]], dict[int, str | None]]:
            pods = self._worker_pods()
            phases = {i: (pods[i].get("status") or {}).get("phase") if i in pods else None
                      for i in range(len(self.jobs))}
            failed = [i for i, phase in phases.items() if phase == "Failed"]
            if failed:
                raise LabError(self._failure(failed[0], pods[failed[0]]))
            return pods, phases

        try:
            return wait_until(
                poll, lambda pp: all(phase == "Succeeded" for phase in pp[1].values()),
                timeout_s=self.deadline_s, every_s=self.poll_s,
                what=f"load {self.spec.name!r} workers finished")[0]
        except PollTimeout as exc:
            pods, phases = exc.last
        waiting = next(i for i, phase in phases.items() if phase != "Succeeded")
        why = (why_not_ready(pods[waiting], self.api.list_events(
            self.settings.namespace, pods[waiting]["metadata"]["name"]))
            if waiting in pods else "no pod was created (see the Job's events)")
        raise LabError(f"load {self.spec.name!r}: worker {waiting} "
                       f"({self.jobs[waiting]['metadata']['name']}) did not finish "
                       f"within {self.deadline_s} s: {why}")

    def _log(self, pod: dict[str, Any]) -> str:
        return self.api.pod_log(self.settings.namespace, pod["metadata"]["name"],
                                WORKER_CONTAINER)

    def _failure(self, index: int, pod: dict[str, Any]) -> str:
        log = self._log(pod).strip()
        return (f"load {self.spec.name!r}: worker {index} ({pod['metadata']['name']}) failed: "
                f"{log[-_LOG_TAIL_CHARS:] or why_not_ready(pod, [])}")

    def _collect(self, pods: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        return [result_from_log(self._log(pods[i]), f"load {self.spec.name!r} worker {i} "
                                                    f"({pods[i]['metadata']['name']})")
                for i in range(len(self.jobs))]

    def _print_rest(self) -> None:
        """The dry run's wait and log steps, as the commands that would do them."""
        ns = self.settings.namespace
        for job in self.jobs:
            name = job["metadata"]["name"]
            self.api.announce(f"kubectl wait -n {ns} --for=condition=complete job/{name} "
                              f"--timeout={self.deadline_s}s")
            self.api.announce(f"kubectl logs -n {ns} job/{name} -c {WORKER_CONTAINER} "
                              "| tail -n 1  # the worker's result JSON")


def run_load_jobs(env: LoadJobs, client: str, spec: LoadSpec, out_path: Path) -> LoadResult:
    """Run ``spec`` as ``spec.processes`` worker Jobs beside pod ``client`` and return the
    exact merge of their results (the module docstring gives the steps).

    Args:
        env: an env with the :class:`~meshlab.envs.capabilities.LoadJobs` capability (kube).
        client: the client pod's name.
        spec: the whole load.
        out_path: where the merged result is written (each part beside it).

    Raises:
        GuardrailError: the workers would take the lab past ``max_pods``, or the client's
            node is not opted in; checked before any Job is created.
        LabError: a worker failed or overran (its log or reason named); in a dry run outside
            a dry-run scope, after printing the Jobs (inside one: a not-measured result).
    """
    at = env.job_placement(client, spec.processes, f"the workers of load {spec.name!r}")
    return JobLoad(at.api, at.settings, at.lab, at.client, spec, out_path, at.poll_s).run()
