"""Retrying calls to LPS: which failures waiting can cure, and how long to wait between tries."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Codes that say "not now": the server is down or draining, a deadline passed, a limit or the
# queue is full, or the transport broke (grpc reports a broken write as INTERNAL or UNKNOWN).
# Every other code (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, ALREADY_EXISTS, ...) says
# that the same call will fail again: the caller stops at once and names it.
RETRYABLE_CODES = frozenset(
    {
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "CANCELLED",
        "INTERNAL",
        "UNKNOWN",
    }
)


def is_retryable(code: str) -> bool:
    """True when retrying a call that failed with gRPC status `code` may succeed."""
    return code in RETRYABLE_CODES


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter that never retries sooner than the server asked.

    Args:
        initial_s: the ceiling of the first delay.
        max_s: the largest ceiling.
        rng: the source of jitter (seeded in tests).
    """

    initial_s: float = 0.2
    max_s: float = 5.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float = 0.0) -> float:
        """Seconds to wait before try `attempt + 1` (0-based); at least `retry_after` (RetryInfo)
        plus up to a fifth more, so clients told the same delay do not return together."""
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(attempt, 30))
        jittered = self.rng.uniform(ceiling / 2, ceiling)
        if retry_after > 0:
            return max(jittered, retry_after * self.rng.uniform(1.0, 1.2))
        return jittered
