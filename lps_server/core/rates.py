"""What a provider's rate limits count, as plain values shared by providers, budgets and processing.

Providers limit requests and tokens per period (a minute): OpenAI and compatible servers count
`requests` and `tokens` (prompt plus the answer allowance); Anthropic counts `requests`,
`input_tokens` and `output_tokens` separately. A `RateCounts` holds one amount of each kind; a
budget has a limit of each kind (0: no limit on that kind).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

#: The kinds a rate limit can count, in the order scripts and metrics list them.
RATE_KINDS = ("requests", "tokens", "input_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class RateCounts:
    """An amount of each kind a rate limit counts (a call's cost, a window's use, its limits)."""

    requests: int = 0
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def values(self) -> tuple[int, int, int, int]:
        """The amounts in RATE_KINDS order."""
        return (self.requests, self.tokens, self.input_tokens, self.output_tokens)

    @classmethod
    def of(cls, values: tuple[int, ...] | list[int]) -> RateCounts:
        """The counts of amounts in RATE_KINDS order."""
        return cls(*(int(v) for v in values))

    def __add__(self, other: RateCounts) -> RateCounts:
        return RateCounts.of([a + b for a, b in zip(self.values(), other.values(), strict=True)])

    def any(self) -> bool:
        """True when some kind is non-zero."""
        return any(self.values())

    def exceeds(self, limits: RateCounts) -> list[str]:
        """The kinds in which this amount is over a (non-zero) limit."""
        return [
            f.name
            for f, need, limit in zip(fields(self), self.values(), limits.values(), strict=True)
            if limit and need > limit
        ]

    def tightest(self, other: RateCounts) -> RateCounts:
        """Per kind the smaller of two sets of limits, where 0 means no limit."""
        return RateCounts.of(
            [
                min(a, b) if a and b else a or b
                for a, b in zip(self.values(), other.values(), strict=True)
            ]
        )


@dataclass(frozen=True, slots=True)
class RateBudget:
    """The limits a call draws from, per `window_s` seconds, and how large one call may be.

    Attributes:
        limits: requests and tokens per window (0: that kind is not limited here).
        window_s: the provider's limit period (60 s for a per-minute limit).
        max_input_tokens: the most prompt tokens one call may carry (0: no limit).
        context_tokens: the model's context, prompt plus answer (0: unknown).
    """

    limits: RateCounts = field(default_factory=RateCounts)
    window_s: float = 60.0
    max_input_tokens: int = 0
    context_tokens: int = 0


@dataclass(frozen=True, slots=True)
class LimitReading:
    """What a provider said about one kind of limit in a response's headers."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None


@dataclass(frozen=True, slots=True)
class RateLimitReading:
    """A response's rate-limit headers, per kind (absent kinds: not sent), and its Retry-After."""

    kinds: dict[str, LimitReading]
    retry_after_s: float | None = None

    def limits(self) -> RateCounts:
        """The limits the provider announced (0 where it said nothing)."""
        return RateCounts.of([(self.kinds.get(k) or LimitReading()).limit or 0 for k in RATE_KINDS])

    def used(self) -> RateCounts:
        """What the provider counts as used in its current window: limit minus remaining."""
        values = []
        for kind in RATE_KINDS:
            r = self.kinds.get(kind) or LimitReading()
            known = r.limit is not None and r.remaining is not None
            values.append(max(0, (r.limit or 0) - (r.remaining or 0)) if known else 0)
        return RateCounts.of(values)

    def exhausted_reset_s(self) -> float | None:
        """The longest reset among kinds with nothing remaining (when to try after a 429 that
        carried no Retry-After), or None."""
        resets = [
            r.reset_s
            for r in self.kinds.values()
            if r.remaining is not None and r.remaining <= 0 and r.reset_s is not None
        ]
        return max(resets) if resets else None
