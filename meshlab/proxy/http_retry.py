"""Attempt and retry bookkeeping of one HTTP stream (Envoy router retry state, sans-IO).

Envoy counts every upstream attempt (``x-envoy-attempt-count``), prefers endpoints it has not
tried yet, and retries a reset only when the route's ``retry_on`` covers it and retries are left;
a retriable reset with none left sets ``URX``. Backoff is ``JitteredExponentialBackOffStrategy``.
"""

from __future__ import annotations

from collections.abc import Callable

from meshlab.proxy.config import RetrySettings
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.router import Address


def backoff_delay_s(retry_number: int, settings: RetrySettings, rng: Callable[[], float]) -> float:
    """Envoy ``JitteredExponentialBackOffStrategy``: uniform in [0, base*(2^n - 1)), capped.

    Args:
        retry_number: 1 for the first retry.
        settings: the retry policy (base 25 ms, max 250 ms by default).
        rng: uniform [0, 1) source.
    """
    upper_ms = min(settings.base_interval_ms * ((1 << retry_number) - 1), settings.max_interval_ms)
    return rng() * upper_ms / 1000.0


def retriable(reason: ResetReason, policy: RetrySettings, before_request: bool) -> bool:
    """True when ``policy.retry_on`` covers a reset for ``reason``.

    Args:
        reason: why the attempt failed.
        policy: the route's retry policy.
        before_request: the reset came before the request was sent upstream.
    """
    on = policy.retry_on
    if "reset" in on:
        return True
    if reason.is_connect_failure and ("connect-failure" in on or "reset-before-request" in on):
        return True
    return before_request and "reset-before-request" in on


class RetryState:
    """Attempts of one stream and the retries its route policy still allows.

    Attributes:
        policy: the route's retry policy, None = never retry.
        attempt: attempts started so far (the latest one's ``x-envoy-attempt-count``).
        retries_done: retries granted so far.
        tried: endpoints already attempted (the next pick prefers others).
        exhausted: a retriable reset found no retry left (the stream adds ``URX``).
    """

    def __init__(self, policy: RetrySettings | None, rng: Callable[[], float]) -> None:
        self.policy = policy
        self._rng = rng
        self.attempt = 0
        self.retries_done = 0
        self.tried: set[Address] = set()
        self.exhausted = False

    def start_attempt(self, endpoint: Address) -> int:
        """Count a new attempt to ``endpoint``; returns its number (1 for the first)."""
        self.attempt += 1
        self.tried.add(endpoint)
        return self.attempt

    def retry_delay_s(self, reason: ResetReason, *, before_request: bool) -> float | None:
        """Grant a retry after a reset: the backoff delay, or None when not retrying.

        Sets :attr:`exhausted` when the reset was retriable but no retry is left.
        """
        policy = self.policy
        if policy is None or not retriable(reason, policy, before_request):
            return None
        if self.retries_done < policy.num_retries:
            self.retries_done += 1
            return backoff_delay_s(self.retries_done, policy, self._rng)
        self.exhausted = True
        return None

    def __repr__(self) -> str:
        return (f"RetryState(attempt={self.attempt}, retries_done={self.retries_done}, "
                f"exhausted={self.exhausted})")
