"""Upstream side: endpoint routing, connection pool, circuit breakers, outlier detection, socket options."""
