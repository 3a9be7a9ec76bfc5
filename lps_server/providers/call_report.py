"""How large a call is before it is sent, and what its provider said about rate limits and billed
after.

The estimate is the usual rule of thumb, about four characters per token, over everything the
call sends (system prompt, user message, answer schema), plus the answer allowance (max tokens).
It is never exact: the budget corrects it with the provider's own count, from the response's usage
(`CallReport.counted`, `reported_input`) and its rate-limit headers (`readings`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lps_server.core.domain import TokenUsage
from lps_server.core.rates import RateCounts, RateLimitReading

# Role markers and message framing the providers count on top of the text.
MESSAGE_OVERHEAD_TOKENS = 8


def estimate_tokens(text: str) -> int:
    """About four characters per token, rounded up."""
    return (len(text) + 3) // 4


def call_cost(input_tokens: int, allowance: int, *, calls: int = 1) -> RateCounts:
    """What a call asks of a rate budget before it is sent: its prompt plus its answer allowance
    (providers reserve the allowance when they admit a call)."""
    return RateCounts(
        requests=calls,
        tokens=input_tokens + allowance,
        input_tokens=input_tokens,
        output_tokens=allowance,
    )


@dataclass
class CallReport:
    """Filled in by an HTTP provider during one `compare`: every HTTP call it made and what each
    response said. Read by the budget once the calls are done, and by the runner for the token
    and cost metrics.

    Attributes:
        calls: HTTP calls sent.
        rate_limited: of those, answered 429.
        readings: the rate-limit headers of every response that had some, in order.
        counted: what the provider counted for the calls it answered (its usage), plus the
            estimate of those it did not (whether they counted is unknown: assume they did).
        estimated_input: our estimate of the prompts of the answered calls...
        reported_input: ...and the provider's count of the same prompts (calibrates estimates).
        billed: the usage the provider reported for every call it answered, its answer usable or
            not (the provider bills both), each call once.
        cost_usd: the price of `billed`.
    """

    calls: int = 0
    rate_limited: int = 0
    readings: list[RateLimitReading] = field(default_factory=list)
    counted: RateCounts = field(default_factory=RateCounts)
    estimated_input: int = 0
    reported_input: int = 0
    billed: TokenUsage = field(default_factory=TokenUsage)
    cost_usd: float = 0.0

    def bill(self, usage: TokenUsage, cost_usd: float) -> None:
        """Add the usage of one answered call, and its price."""
        b = self.billed
        self.billed = TokenUsage(
            b.prompt_tokens + usage.prompt_tokens,
            b.completion_tokens + usage.completion_tokens,
            b.cache_read_tokens + usage.cache_read_tokens,
            b.cache_write_tokens + usage.cache_write_tokens,
        )
        self.cost_usd += cost_usd
