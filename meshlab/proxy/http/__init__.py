"""HTTP/1.1 connection manager and router: codec, per-request stream core, headers, retries, timeouts, the asyncio driver."""
