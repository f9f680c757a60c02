"""The admin listener (15000) and the Prometheus endpoints (15090, 15020)."""
