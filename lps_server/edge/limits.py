"""Per-client limits: concurrent streams and a token-bucket submission rate.

A client is its bearer token when authentication is on, else its IP address
(`auth.client_identity`). Both limiters live in one replica's memory: with N replicas behind a
balancer a client may reach N times the configured rate, which the docs state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lps_server.core.config import Settings
from lps_server.core.errors import LimitExceededError

# A client over its stream limit can try again once one of its streams ends; we cannot know when,
# so we suggest a short pause rather than a hammering loop.
STREAM_RETRY_AFTER_S = 1.0
# Forget idle clients' buckets past this many clients, so spoofed or churning peers cannot grow
# the table without bound.
MAX_TRACKED_CLIENTS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per client: `rate` submissions per second, bursts of up to `burst`.

    Args:
        rate: tokens added per second; 0 turns the limiter off.
        burst: bucket capacity (a new client starts full).
        clock: monotonic time source.
    """

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        """True when a rate is configured."""
        return self._rate > 0

    @property
    def tracked_clients(self) -> int:
        """How many clients' buckets are held in memory (bounded by MAX_TRACKED_CLIENTS)."""
        return len(self._buckets)

    def take(self, client: str) -> float:
        """Spend one token of `client`'s bucket: 0.0 when admitted, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[client] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def admit(self, client: str) -> None:
        """Spend one token or raise.

        Raises:
            LimitExceededError: the client is over its rate; `retry_after` says when to retry.
        """
        wait = self.take(client)
        if wait > 0:
            raise LimitExceededError(self.message(), retry_after=wait)

    def message(self) -> str:
        """The explanation given with a refusal."""
        return (
            f"submission rate limit reached: {self._rate:g} requests per second with bursts of "
            f"{self._burst:g} per client (LPS_RATE_LIMIT_PER_SECOND, LPS_RATE_LIMIT_BURST)"
        )

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) < MAX_TRACKED_CLIENTS:
            return
        # A bucket that has refilled is indistinguishable from a new one: dropping it is free.
        full_after = self._burst / self._rate
        for key in [k for k, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[key]
        if len(self._buckets) >= MAX_TRACKED_CLIENTS:
            # Everyone is active: drop the least recently seen, which errs towards admitting.
            oldest = min(self._buckets, key=lambda k: self._buckets[k].updated)
            del self._buckets[oldest]


class StreamLimiter:
    """At most `max_per_client` open streaming calls per client."""

    def __init__(self, *, max_per_client: int) -> None:
        self._max = max_per_client
        self._open: dict[str, int] = {}

    def open_streams(self, client: str) -> int:
        """How many streams `client` holds now."""
        return self._open.get(client, 0)

    @contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """Hold one of `client`'s stream slots for the duration of the block.

        Raises:
            LimitExceededError: the client already holds every slot.
        """
        held = self._open.get(client, 0)
        if held >= self._max:
            raise LimitExceededError(
                f"too many concurrent streams: at most {self._max} per client "
                "(LPS_MAX_STREAMS_PER_CLIENT); close one before opening another",
                retry_after=STREAM_RETRY_AFTER_S,
            )
        self._open[client] = held + 1
        try:
            yield
        finally:
            left = self._open[client] - 1
            if left:
                self._open[client] = left
            else:
                del self._open[client]


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Every per-client and per-message limit of one replica."""

    rate: RateLimiter
    streams: StreamLimiter
    max_requests_per_message: int

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> ClientLimits:
        """Limits from LPS_RATE_LIMIT_*, LPS_MAX_STREAMS_PER_CLIENT and _REQUESTS_PER_MESSAGE."""
        return cls(
            rate=RateLimiter(
                rate=settings.rate_limit_per_second,
                burst=settings.rate_limit_burst,
                clock=clock,
            ),
            streams=StreamLimiter(max_per_client=settings.max_streams_per_client),
            max_requests_per_message=settings.max_requests_per_message,
        )
