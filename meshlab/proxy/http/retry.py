"""Attempt and retry bookkeeping of one HTTP stream (Envoy router retry state, sans-IO).

Rules (``E:source/common/router/retry_state_impl.cc``, ENVOY.md §8):

- Envoy counts every upstream attempt (``x-envoy-attempt-count``) and prefers endpoints it has
  not tried yet (Istio's ``previous_hosts`` predicate).
- A reset is retried when ``retry_on`` covers it: never on ``overflow``; connect failures on
  ``connect-failure``; any reset before the request was sent on ``reset-before-request``; any
  reset on ``reset``, ``5xx`` or ``gateway-error``. A per-try timeout is a ``local reset`` after
  the request started.
- A response is retried on ``5xx`` (any 5xx), ``gateway-error`` (502/503/504),
  ``retriable-4xx`` (409) and ``retriable-status-codes`` (the listed codes).
- A retriable outcome with no retry left marks the state :attr:`RetryState.exhausted` (``URX``).
- Backoff is ``JitteredExponentialBackOffStrategy`` (base 25 ms, max 250 ms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from meshlab.proxy.config.policy import RouteRetry
from meshlab.proxy.config.sidecar import ISTIO_DEFAULT_RETRY_ON, RetrySettings
from meshlab.proxy.flags import ResetReason
from meshlab.proxy.upstream.router import Address

_GATEWAY_ERRORS = frozenset({502, 503, 504})


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
    """True when ``policy.retry_on`` covers a reset for ``reason`` (``wouldRetryFromReset``).

    Args:
        reason: why the attempt failed.
        policy: the route's retry policy.
        before_request: the reset came before the request was sent upstream.
    """
    on = policy.retry_on
    if reason is ResetReason.OVERFLOW:
        return False
    if reason.is_connect_failure and "connect-failure" in on:
        return True
    if before_request and "reset-before-request" in on:
        return True
    return bool(on & {"reset", "5xx", "gateway-error"})


def retriable_status(code: int, policy: RetrySettings) -> bool:
    """True when ``policy.retry_on`` retries a response with status ``code``."""
    on = policy.retry_on
    return (("5xx" in on and 500 <= code <= 599)
            or ("gateway-error" in on and code in _GATEWAY_ERRORS)
            or ("retriable-4xx" in on and code == 409)
            or ("retriable-status-codes" in on and code in policy.retriable_status_codes))


def settings_from_route(retry: RouteRetry, base_interval_ms: float = 25.0) -> RetrySettings:
    """The :class:`RetrySettings` of a VirtualService ``retries`` block (Istio ``retry.go``).

    Numeric ``retryOn`` entries become ``retriable_status_codes`` (plus the
    ``retriable-status-codes`` condition); an empty ``retryOn`` keeps Istio's default conditions.

    Args:
        retry: the parsed route retry policy.
        base_interval_ms: backoff base.
    """
    on = set(retry.retry_on) or set(ISTIO_DEFAULT_RETRY_ON.split(","))
    codes = {int(c) for c in on if c.isdigit()}
    on -= {c for c in on if c.isdigit()}
    if codes:
        on.add("retriable-status-codes")
    return RetrySettings(num_retries=retry.num_retries, retry_on=frozenset(on),
                         base_interval_ms=base_interval_ms,
                         per_try_timeout_s=retry.per_try_timeout_s,
                         retriable_status_codes=frozenset(codes))


class RetryLimits(Protocol):
    """The circuit breakers' ``max_retries`` resource (:mod:`meshlab.proxy.upstream.circuit`)."""

    def try_retry(self) -> bool:
        """Take a retry slot; False when the breaker is full."""

    def retry_done(self) -> None:
        """Give a slot back."""


class RetryState:
    """Attempts of one stream and the retries its route policy still allows.

    Attributes:
        policy: the route's retry policy, None = never retry.
        attempt: attempts started so far (the latest one's ``x-envoy-attempt-count``).
        retries_done: retries granted so far.
        tried: endpoints already attempted (the next pick prefers others).
        exhausted: a retriable outcome found no retry left (the stream adds ``URX``).
        overflowed: the last granted retry found the ``max_retries`` breaker full (``UO``).
    """

    def __init__(self, policy: RetrySettings | None, rng: Callable[[], float]) -> None:
        self.policy = policy
        self._rng = rng
        self.attempt = 0
        self.retries_done = 0
        self.tried: set[Address] = set()
        self.exhausted = False
        self.overflowed = False
        self._slot = False

    def take_slot(self, delay_s: float | None, limits: RetryLimits | None) -> float | None:
        """Hold a ``max_retries`` slot for a granted retry (``delay_s`` not None).

        The slot of the previous retry is given back first (Envoy holds it until the retried
        attempt's outcome). Returns ``delay_s``, or None with :attr:`overflowed` set when the
        breaker is full.
        """
        self.release_slot(limits)
        self.overflowed = False
        if delay_s is not None and limits is not None:
            self._slot = limits.try_retry()
            if not self._slot:
                self.overflowed = True
                return None
        return delay_s

    def release_slot(self, limits: RetryLimits | None) -> None:
        """Give back a held ``max_retries`` slot (idempotent)."""
        if self._slot:
            self._slot = False
            if limits is not None:
                limits.retry_done()

    def start_attempt(self, endpoint: Address) -> int:
        """Count a new attempt to ``endpoint``; returns its number (1 for the first)."""
        self.attempt += 1
        self.tried.add(endpoint)
        return self.attempt

    def _grant(self, policy: RetrySettings) -> float | None:
        if self.retries_done < policy.num_retries:
            self.retries_done += 1
            return backoff_delay_s(self.retries_done, policy, self._rng)
        self.exhausted = True
        return None

    def retry_delay_s(self, reason: ResetReason, *, before_request: bool) -> float | None:
        """Grant a retry after a reset: the backoff delay, or None when not retrying.

        Sets :attr:`exhausted` when the reset was retriable but no retry is left.
        """
        policy = self.policy
        if policy is None or not retriable(reason, policy, before_request):
            return None
        return self._grant(policy)

    def status_retry_delay_s(self, code: int) -> float | None:
        """Grant a retry after a response with status ``code`` (None: forward it)."""
        policy = self.policy
        if policy is None or not retriable_status(code, policy):
            return None
        return self._grant(policy)

    def __repr__(self) -> str:
        return (f"RetryState(attempt={self.attempt}, retries_done={self.retries_done}, "
                f"exhausted={self.exhausted})")
