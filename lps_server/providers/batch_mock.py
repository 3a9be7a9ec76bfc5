"""The mock provider's batch API: the deterministic judge, answering a whole batch
`LPS_MOCK_BATCH_LATENCY_MS` after it was created.

It keeps no state, so that any replica can poll and collect a batch another replica created: the
batch id carries the job id and the creation time, and the results are the judge's verdicts on
the items the job holds (the same verdicts as a synchronous call, since they depend only on the
request id and the texts). With `LPS_MOCK_ERROR_RATE`, a line fails (retryably) when a SHA-256
draw of its custom id falls below the rate, so every replica agrees on which lines fail, and a
retried request, in a later job with another custom id, draws again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from lps_server.core.domain import ErrorCode, ProviderName, TokenUsage
from lps_server.providers.base import ItemFailure, ItemOutcome, ItemSuccess, ProviderCallError
from lps_server.providers.batch_base import BatchOutcome, BatchSpec, BatchStatus, ClaimedBy
from lps_server.providers.mock import judge

# Tokens the mock reports: about four characters per token, a short answer per comparison.
COMPLETION_TOKENS = 48
_PREFIX = "mockbatch_"


class MockBatchApi:
    """Batches of the built-in mock judge.

    Args:
        latency_ms: how long after its creation a batch ends.
        temperature: the judge's temperature T.
        error_rate: the share of lines that fail (retryably).
        clock: Unix time source.
    """

    name = ProviderName.MOCK
    max_lines = 100_000
    max_bytes = 1 << 40
    call_timeout_s = 1.0

    def __init__(
        self,
        *,
        latency_ms: float,
        temperature: float,
        error_rate: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._latency_ms = latency_ms
        self._temperature = temperature
        self._error_rate = error_rate
        self._clock = clock
        self.created = 0

    async def create(self, spec: BatchSpec) -> str:
        """A batch id naming the job and the time it was created."""
        self.created += 1
        return f"{_PREFIX}{spec.job_id}_{round(self._clock() * 1000)}"

    async def find(self, spec: BatchSpec, *, since: float, claimed: ClaimedBy) -> str | None:
        """Never found: a mock batch costs nothing, so creating it again is harmless."""
        return None

    def _created_ms(self, batch_id: str) -> int:
        try:
            return int(batch_id.removeprefix(_PREFIX).rsplit("_", 1)[1])
        except (IndexError, ValueError):
            raise ProviderCallError(
                ErrorCode.PROVIDER_ERROR, f"mock: no batch {batch_id[:80]!r}"
            ) from None

    async def status(self, batch_id: str) -> BatchStatus:
        """`in_progress` until the latency has passed, then `ended`."""
        ended = self._clock() * 1000 >= self._created_ms(batch_id) + self._latency_ms
        return BatchStatus(
            state="ended" if ended else "in_progress",
            ended=ended,
            outcome=BatchOutcome.COMPLETED if ended else None,
        )

    async def results(
        self, batch_id: str, spec: BatchSpec, status: BatchStatus
    ) -> dict[str, list[ItemOutcome]]:
        """The judge's verdict on every item of every line (some lines failed by the rate)."""
        self._created_ms(batch_id)
        found: dict[str, list[ItemOutcome]] = {}
        for line in spec.lines:
            if self._error_rate > 0 and _draw(line.custom_id) < self._error_rate:
                failure = ItemFailure(
                    ErrorCode.PROVIDER_UNAVAILABLE, "mock batch: injected line error (500)"
                )
                found[line.custom_id] = [failure] * len(line.items)
                continue
            found[line.custom_id] = [
                ItemSuccess(
                    judge(
                        item.key,
                        item.essay_a.text,
                        item.essay_b.text,
                        temperature=self._temperature,
                    ),
                    TokenUsage(
                        _tokens(item.essay_a.text) + _tokens(item.essay_b.text), COMPLETION_TOKENS
                    ),
                    cost_usd=0.0,
                )
                for item in line.items
            ]
        return found

    async def cancel(self, batch_id: str) -> None:
        """Nothing to cancel: a mock batch costs nothing."""

    async def aclose(self) -> None:
        """Nothing to release."""


def _draw(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4
