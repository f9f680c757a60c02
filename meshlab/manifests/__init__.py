"""Real Kubernetes/Istio manifests (YAML) → a :class:`meshlab.model.Topology`.

A manifests folder (or a base folder plus overlays) holds the lab's Namespaces, StatefulSets,
Deployments, Services, its ``LabCluster`` and Istio's DestinationRules, VirtualServices and
EnvoyFilters. :func:`load_topology` reads them strictly: every problem is a
:class:`~meshlab.errors.ManifestError` naming the file and the field
(``<file>: <Kind>/<name>.<field>: <problem>``), raised before anything is built.

Modules:

- :mod:`~meshlab.manifests.document`: :class:`Document`, one YAML document with its file.
- :mod:`~meshlab.manifests.loader`: reads folders, checks schemas, builds the Topology.
- :mod:`~meshlab.manifests.istio_resources`: DestinationRule and VirtualService.
- :mod:`~meshlab.manifests.istio_envoy_filter`: EnvoyFilter.
- :mod:`~meshlab.manifests.istio_fields`: field readers the Istio kinds share.

The loader imports the Istio parsers; they import only :mod:`~meshlab.manifests.document`.
"""

from meshlab.manifests.document import Document
from meshlab.manifests.loader import load_topology

__all__ = ["Document", "load_topology"]
