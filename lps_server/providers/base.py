"""The provider interface: a call takes N comparison items and returns one outcome per item."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lps_server.core.domain import (
    ErrorCode,
    Essay,
    Judgement,
    Overrides,
    ProviderName,
    QueuedRequest,
    TokenUsage,
)
from lps_server.providers.call_report import CallReport

#: Failure codes that a later attempt may cure.
RETRYABLE_CODES = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.PROVIDER_UNAVAILABLE,
        ErrorCode.TIMEOUT,
        ErrorCode.INVALID_RESPONSE,
    }
)


@dataclass(frozen=True, slots=True)
class ComparisonItem:
    """One comparison inside a provider call; `key` is unique within the call."""

    key: str
    essay_a: Essay
    essay_b: Essay
    instructions: str


def comparison_items(queued: Sequence[QueuedRequest]) -> list[ComparisonItem]:
    """The items a provider judges for queued requests (keyed by request id)."""
    return [
        ComparisonItem(
            key=q.request_id,
            essay_a=q.request.essay_a,
            essay_b=q.request.essay_b,
            instructions=q.request.instructions,
        )
        for q in queued
    ]


@dataclass(frozen=True, slots=True)
class ItemSuccess:
    """A judgement for one item, with the tokens and cost attributed to it."""

    judgement: Judgement
    usage: TokenUsage
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """A failure of one item; `retry_after` is the provider's hint in seconds, if any."""

    code: ErrorCode
    message: str
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """True when another attempt may succeed."""
        return self.code in RETRYABLE_CODES


ItemOutcome = ItemSuccess | ItemFailure


class ProviderCallError(Exception):
    """The whole call failed; every item of it shares this failure.

    `usage` is what the provider reported for a call it answered unusably (it billed it), None
    when it did not answer.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_after: float | None = None,
        usage: TokenUsage | None = None,
    ) -> None:
        self.failure = ItemFailure(code, message, retry_after)
        self.usage = usage
        super().__init__(message)


class Provider(Protocol):
    """An LLM provider adapter."""

    @property
    def name(self) -> ProviderName:
        """Which provider this adapter calls."""
        ...

    @property
    def default_model(self) -> str:
        """The model used when a request does not override it."""
        ...

    def known_models(self) -> frozenset[str]:
        """Models this adapter is configured for; other names are reported as `other` in metrics."""
        ...

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        """Judge every item; the result has one outcome per item, in order.

        Raises:
            ProviderCallError: the call as a whole failed.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class ReportingProvider(Provider, Protocol):
    """A provider that tells a `CallReport` what each of its calls was billed (`CallReport.bill`),
    whether the answer was usable or not; its outcomes' usage is only each item's share of what
    was answered. The usage of the outcomes of any other provider is exactly what it billed."""

    #: True; marks a reporting provider (a runtime protocol check sees names, not signatures).
    reports_calls: bool

    async def compare(
        self,
        items: Sequence[ComparisonItem],
        *,
        model: str,
        overrides: Overrides,
        report: CallReport | None = None,
    ) -> list[ItemOutcome]:
        """Judge every item, telling `report` what every call cost.

        Raises:
            ProviderCallError: the call as a whole failed.
        """
        ...
