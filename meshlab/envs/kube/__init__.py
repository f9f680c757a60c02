"""The kube env: the same manifests and suites on a real Kubernetes cluster with Istio."""
