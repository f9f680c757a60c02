"""The TCP proxy filter: relay with Envoy's half-close semantics."""
