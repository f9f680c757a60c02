"""Bringing labs up and down for a runner, and the pool of labs a session switches between.

An env's own ``up``/``down`` build and remove the lab. A runner does more around them:
faults that a dead runner left active (the ledger, :mod:`meshlab.faults.ledger`) are reverted
first (:func:`lab_up`, :func:`lab_down`), a managed Prometheus is started, and the lab's
fingerprint is taken when it comes up so every run can be checked for leftovers
(:class:`LabPool`). Every front end (the pytest plugin, the CLI, the chaostoolkit session)
goes through here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshlab.envs.base import Env
from meshlab.envs.capabilities import Fingerprinting, FreshPods, ManagedPrometheus
from meshlab.envs.manifest_sets import manifest_set
from meshlab.faults.ledger import revert_leftovers

#: Builds (does not bring up) the env of a manifest set (:func:`meshlab.envs.factory.build_env`).
EnvBuilder = Callable[[tuple[Path, ...]], Env]


def lab_up(env: Env) -> list[str]:
    """Revert faults a dead runner left in the ledger, then bring the lab up (the env's ``up``
    also removes a dead lab's namespaces, rules and processes).

    Returns:
        One line per leftover fault reverted (or why it could not be).

    Raises:
        LabError: the lab could not be brought up (it is torn down again).
    """
    reverted = revert_leftovers(env.name, env.lab, env=env)
    env.up()
    return reverted


def lab_down(env: Env) -> list[str]:
    """Revert faults a dead runner left in the ledger, then remove the lab (idempotent).

    Returns:
        One line per leftover fault reverted, then ``removed <what>`` per namespace removed.
    """
    reverted = revert_leftovers(env.name, env.lab, env=env)
    return reverted + [f"removed {name}" for name in env.down()]


class LabPool:
    """A session's labs: one up at a time, switched when a run asks for other overlays.

    A suite picks its lab with ``@pytest.mark.meshlab_lab(overlays=["ha-l2"])``; runs without
    it get the base lab. A lab is kept for the next run that asks for the same one, which gets
    fresh pods first (:class:`~meshlab.envs.capabilities.FreshPods`, about a second; the lab's
    network, cluster DNS and Prometheus stay), so each run starts from the same steady state;
    building a lab with its Prometheus takes ~10 s (the server's first scrape of every
    target). Each lab's fingerprint (:mod:`meshlab.envs.local.fingerprint`) is taken when it
    comes up, for the leftover check after every run (:meth:`leftovers`).

    Args:
        build: builds the env of a manifest set (base folder first).
        base: the base manifests folder.
        prometheus: start a managed Prometheus (the local lab's own) with each lab and query
            it after each run.
        dry_run: the env only prints (kube dry run): no Prometheus query.
        keep: leave the last lab up at :meth:`shutdown` (``meshlab down`` removes it).
    """

    def __init__(self, build: EnvBuilder, base: Path, *, prometheus: bool = False,
                 dry_run: bool = False, keep: bool = False) -> None:
        self.build = build
        self.base = base
        self.prometheus = prometheus
        self.dry_run = dry_run
        self.keep = keep
        self.env: Env | None = None
        self.key: tuple[Path, ...] | None = None
        self.baseline: dict[str, Any] | None = None
        self.used = False  # a run had the current lab: the next one gets fresh pods

    def __repr__(self) -> str:
        return f"LabPool(base={str(self.base)!r}, up={[str(p) for p in self.key or ()]})"

    def get(self, overlays: tuple[str, ...] = ()) -> Env:
        """The env for base + ``overlays``, bringing it up (and the previous one down) if needed.

        Raises:
            ConfigError: unknown overlay, unsupported env, invalid manifests (nothing built,
                the current lab stays up).
            LabError: the lab could not be brought up.
        """
        key = manifest_set(self.base, overlays)
        if key == self.key and self.env is not None:
            if self.used and isinstance(self.env, FreshPods):
                self.env.restart_pods()
            self.used = True
            return self.env
        env = self.build(key)  # validates before the old lab goes down
        self.close(keep=False)
        lab_up(env)
        if self.prometheus and isinstance(env, ManagedPrometheus):
            env.start_prometheus()  # before the fingerprint: it runs for the lab's whole life
        self.env, self.key, self.used = env, key, True
        self.baseline = env.fingerprint() if isinstance(env, Fingerprinting) else None
        return env

    def queries_prometheus(self, env: Env) -> bool:
        """Whether a run on ``env`` queries a Prometheus at its end: ``env`` is the pool's
        current lab and has its managed server (``prometheus``) or a configured one (a
        cluster's ``prometheus_url``; not in a dry run)."""
        if env is not self.env:
            return False
        if isinstance(env, ManagedPrometheus):
            return self.prometheus
        return bool(env.prometheus_configured() and not self.dry_run)

    def leftovers(self, env: Env) -> list[str]:
        """What ``env`` (the pool's current lab) has now that it did not have when it came up."""
        if env is not self.env or self.baseline is None or not isinstance(env, Fingerprinting):
            return []
        from meshlab.envs.local.fingerprint import diff

        return diff(self.baseline, env.fingerprint())

    def close(self, keep: bool | None = None) -> None:
        """Tear the current lab down (:func:`lab_down`), unless ``keep`` (default: the pool's
        ``keep``)."""
        env, self.env, self.key, self.baseline, self.used = self.env, None, None, None, False
        if env is not None and not (self.keep if keep is None else keep):
            lab_down(env)

    def shutdown(self) -> None:
        """End of session: :meth:`close` with the pool's ``keep``."""
        self.close()
