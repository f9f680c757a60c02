"""meshlab: a test-bed and chaos-testing framework for service meshes (Istio/Envoy).

The local env builds the layered fortio lab from real Linux network namespaces with an
embedded istio-proxy-like sidecar; the kube env applies the same manifests to a cluster.
"""

__version__ = "0.1.0"
