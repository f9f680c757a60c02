"""sidecar.json loading and the Istio policies it carries (CONTRACTS.md §1)."""
