"""The plain Locust baseline of ``benchmarks/load.py``: a minimal ``FastHttpUser``, no meshlab code.

Run headless by the benchmark, e.g. ``locust -f _plain_locustfile.py --headless -u 16 -r 16
-t 8s -H http://10.244.1.3:8080 --only-summary --json-file out``; its own statistics
(``num_requests / (last_request_timestamp - start_time)``) give its requests per second.
"""

from locust import FastHttpUser, constant, task


class PlainUser(FastHttpUser):
    """GET / back to back over one keep-alive connection."""

    wait_time = constant(0)

    @task
    def get_root(self) -> None:
        self.client.get("/")
