"""The provider batch-API interface: a job of lines, each line one bundle of numbered comparisons
(the serial-bundle prompt), answered hours later, line by line, in any order.

A batch is created once (`create`), polled (`status`) until the provider says it has ended, then
its results are read (`results`): for every line the provider answered, one outcome per item,
exactly as a synchronous bundle call gives them. Lines the provider did not answer are simply
absent. `find` looks for a batch of this job that an earlier attempt created but could not
record (its outcome was unknown), so that a batch is never created twice for the same requests.

Batch prices: both providers bill half the synchronous price by default; the price table's
`batch` multiplier per model says otherwise (`providers/pricing.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from lps_server.core.domain import ErrorCode, Overrides, ProviderName, TokenUsage
from lps_server.providers.base import ComparisonItem, ItemFailure, ItemOutcome, ItemSuccess
from lps_server.providers.http_provider import ProviderReply
from lps_server.providers.pricing import NO_CACHE_DISCOUNT, CacheRule, PriceTable
from lps_server.providers.prompting import parse_answer, split_usage

#: What the providers bill for batch work, as a share of the synchronous price.
#: The completion window asked for (OpenAI's only choice; Anthropic's fixed window).
COMPLETION_WINDOW = "24h"


def batch_cost(
    prices: PriceTable, model: str, usage: TokenUsage, *, rule: CacheRule = NO_CACHE_DISCOUNT
) -> float:
    """The batch price of `usage` on `model`: the model's `batch` multiplier (0.5 unless the
    price table says otherwise) of its synchronous price, cached tokens priced by `rule`."""
    return prices.cost(model, usage, rule=rule, batch=True)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One line of a batch: one provider request judging `items` (numbered 1..N in order)."""

    custom_id: str
    items: tuple[ComparisonItem, ...]


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """What one batch job asks: every line of one model with one set of overrides."""

    job_id: str
    model: str
    overrides: Overrides
    lines: tuple[BatchLine, ...]


class BatchOutcome(StrEnum):
    """How a provider batch ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """Where a provider batch stands.

    Attributes:
        state: the provider's own word (`in_progress`, `finalizing`, `ended`...).
        ended: True once the provider will change nothing more and results can be read.
        counts: the provider's tallies of lines (`completed`, `failed`, `succeeded`...).
        outcome: how it ended, once ended.
        error: why a failed batch failed.
        refs: where the results are (`output_file_id`, `error_file_id`, `results_url`).
    """

    state: str
    ended: bool
    counts: Mapping[str, int] = field(default_factory=dict)
    outcome: BatchOutcome | None = None
    error: str = ""
    refs: Mapping[str, str] = field(default_factory=dict)


class CreationUnknown(Exception):
    """The create request may have reached the provider (a timeout or a connection lost after it
    was sent, a 5xx): whether a batch exists is unknown until `find` says."""


#: Whether a provider batch id is already another job's (so `find` must not adopt it).
ClaimedBy = Callable[[str], Awaitable[str | None]]


class BatchApi(Protocol):
    """A provider's batch API."""

    @property
    def name(self) -> ProviderName:
        """Which provider this is."""
        ...

    @property
    def max_lines(self) -> int:
        """The most lines one batch may hold."""
        ...

    @property
    def max_bytes(self) -> int:
        """The most bytes of requests one batch may hold."""
        ...

    @property
    def call_timeout_s(self) -> float:
        """The longest one HTTP call may take: after it, an attempt can no longer land."""
        ...

    async def create(self, spec: BatchSpec) -> str:
        """Create the batch and return the provider's batch id.

        Raises:
            CreationUnknown: the outcome is unknown.
            ProviderCallError: it was not created (with the provider's reason).
        """
        ...

    async def find(self, spec: BatchSpec, *, since: float, claimed: ClaimedBy) -> str | None:
        """The id of a batch of this job created at or after `since` (Unix time), or None."""
        ...

    async def status(self, batch_id: str) -> BatchStatus:
        """Where the batch stands.

        Raises:
            ProviderCallError: the provider could not say.
        """
        ...

    async def results(
        self, batch_id: str, spec: BatchSpec, status: BatchStatus
    ) -> dict[str, list[ItemOutcome]]:
        """The outcome of every item of every line the provider answered, by custom_id.

        Raises:
            ProviderCallError: the results could not be read.
        """
        ...

    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to cancel the batch (finished lines stay billed and readable)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def line_outcomes(
    reply: ProviderReply, items: Sequence[ComparisonItem], cost: Callable[[TokenUsage], float]
) -> list[ItemOutcome]:
    """Per-item outcomes of one answered line, as a synchronous bundle call reads its answer:
    entries matched by index, malformed ones failed alone, usage split evenly.

    Raises:
        ProviderCallError: INVALID_RESPONSE when the answer as a whole is unusable.
    """
    verdicts = parse_answer(reply.answer, len(items))
    usages = split_usage(reply.usage, len(items))
    return [
        v if isinstance(v, ItemFailure) else ItemSuccess(v, usage, cost(usage))
        for v, usage in zip(verdicts, usages, strict=True)
    ]


def expired_line(provider: ProviderName) -> ItemFailure:
    """A line the provider did not run before its batch's window ended (retried later)."""
    return ItemFailure(
        ErrorCode.TIMEOUT,
        f"{provider.value}: the batch's {COMPLETION_WINDOW} window ended before this "
        "comparison ran",
    )


def cancelled_line(provider: ProviderName) -> ItemFailure:
    """A line the provider did not run because its batch was cancelled (not retried)."""
    return ItemFailure(
        ErrorCode.PROVIDER_ERROR,
        f"{provider.value}: the batch was cancelled before this comparison ran",
    )
