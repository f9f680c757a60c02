"""Envoy's stats store and trees, Istio metrics, tcp_stats, rendering for /stats and Prometheus."""
