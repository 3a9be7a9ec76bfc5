"""The built-in mock provider: a deterministic judge whose right answer is known.

An essay's latent quality is q = ln(1 + D), D its number of distinct words (lower-cased, split on
non-letters). Essay A wins with probability 1 / (1 + exp(-((q_A - q_B) / T + bias + noise))); the
draws come from a SHA-256 of the request id and both texts, so every process agrees on every
verdict. `bias` (LPS_MOCK_POSITION_BIAS, default 0) favours position A, as LLM judges often favour
one position; `noise` is Gaussian with SD LPS_MOCK_BUNDLE_POSITION_NOISE times the item's 0-based
index in its bundle (default 0), as a judge loses accuracy deeper into a packed prompt.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import random
import re
import statistics
from collections.abc import Sequence

from lps_server.core.domain import ErrorCode, Judgement, Overrides, ProviderName, TokenUsage, Winner
from lps_server.providers.base import ComparisonItem, ItemFailure, ItemOutcome, ItemSuccess

_WORD = re.compile(r"[^\W\d_]+")
_INJECTED = (
    (ErrorCode.RATE_LIMITED, "mock provider: injected rate limit (429)"),
    (ErrorCode.PROVIDER_UNAVAILABLE, "mock provider: injected unavailability (503)"),
    (ErrorCode.PROVIDER_ERROR, "mock provider: injected internal error (500, not retried)"),
)
_COMPLETION_TOKENS = 48
_STANDARD_NORMAL = statistics.NormalDist()


@functools.lru_cache(maxsize=4096)
def distinct_words(text: str) -> int:
    """Number of distinct lower-cased words, split on non-letters."""
    # Cached: a CJ run compares each essay many times, and tokenising dominated the mock's cost.
    return len(set(_WORD.findall(text.lower())))


def quality(text: str) -> float:
    """The mock judge's latent quality of an essay."""
    return math.log1p(distinct_words(text))


def judge(
    request_id: str,
    text_a: str,
    text_b: str,
    *,
    temperature: float,
    position_bias: float = 0.0,
    noise_sd: float = 0.0,
) -> Judgement:
    """The mock judge's verdict; a pure function of its arguments.

    Args:
        position_bias: a logit added in favour of essay A.
        noise_sd: SD of a Gaussian logit added to the comparison (0: none).
    """
    q_a, q_b = quality(text_a), quality(text_b)
    digest = hashlib.sha256("\x00".join((request_id, text_a, text_b)).encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    logit = (q_a - q_b) / temperature + position_bias
    if noise_sd > 0:
        # A second, independent uniform from the same digest, mapped to a standard normal.
        uniform = (int.from_bytes(digest[8:16], "big") + 0.5) / 2**64
        logit += noise_sd * _STANDARD_NORMAL.inv_cdf(uniform)
    p_a = 1.0 / (1.0 + math.exp(-logit))
    winner = Winner.ESSAY_A if draw < p_a else Winner.ESSAY_B
    gap = abs(q_a - q_b)
    confidence = max(1, min(5, 1 + int(gap / 0.15)))
    d_a, d_b = distinct_words(text_a), distinct_words(text_b)
    chosen = "A" if winner == Winner.ESSAY_A else "B"
    justification = (
        f"Essay {chosen} is preferred: essay A uses {d_a} distinct words and essay B {d_b}, "
        f"and the richer vocabulary carries a more developed argument."
    )
    return Judgement(winner=winner, justification=justification, confidence=confidence)


class MockProvider:
    """A provider that answers a whole bundle in one simulated call.

    Args:
        model: the model name reported in results.
        latency_ms: simulated latency per call.
        latency_per_item_ms: simulated latency added per item.
        jitter: relative latency jitter, 0.1 meaning +-10%.
        error_rate: probability that an item fails with an injected error.
        temperature: the judge's temperature T.
        position_bias: a logit added in favour of essay A.
        bundle_position_noise: the SD of extra logit noise per place in a bundle: the item at
            0-based index i gets noise of SD i * bundle_position_noise.
        rng: randomness for jitter and error injection (verdicts never use it).
    """

    def __init__(
        self,
        *,
        model: str = "mock-judge-1",
        latency_ms: float = 0.0,
        latency_per_item_ms: float = 0.0,
        jitter: float = 0.1,
        error_rate: float = 0.0,
        temperature: float = 0.1,
        position_bias: float = 0.0,
        bundle_position_noise: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self._model = model
        self._latency_ms = latency_ms
        self._per_item_ms = latency_per_item_ms
        self._jitter = jitter
        self._error_rate = error_rate
        self._temperature = temperature
        self._position_bias = position_bias
        self._bundle_position_noise = bundle_position_noise
        self._rng = rng or random.Random(0)
        self.calls = 0

    @property
    def name(self) -> ProviderName:
        """Always ProviderName.MOCK."""
        return ProviderName.MOCK

    @property
    def default_model(self) -> str:
        """The configured mock model name."""
        return self._model

    def known_models(self) -> frozenset[str]:
        """Only the configured model name."""
        return frozenset({self._model})

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        """Judge all items after the simulated latency of one call."""
        self.calls += 1
        delay_ms = self._latency_ms + self._per_item_ms * len(items)
        if delay_ms > 0:
            delay_ms *= 1.0 + self._jitter * (2.0 * self._rng.random() - 1.0)
            await asyncio.sleep(delay_ms / 1000.0)
        shared_prompt_tokens = _tokens(items[0].instructions) // len(items) if items else 0
        return [self._answer(item, i, shared_prompt_tokens) for i, item in enumerate(items)]

    def _answer(self, item: ComparisonItem, index: int, shared_prompt_tokens: int) -> ItemOutcome:
        if self._error_rate > 0 and self._rng.random() < self._error_rate:
            code, message = self._rng.choice(_INJECTED)
            return ItemFailure(code, message, retry_after=None)
        a, b = item.essay_a.text, item.essay_b.text
        verdict = judge(
            item.key,
            a,
            b,
            temperature=self._temperature,
            position_bias=self._position_bias,
            noise_sd=self._bundle_position_noise * index,
        )
        prompt = shared_prompt_tokens + _tokens(item.essay_a.text) + _tokens(item.essay_b.text)
        return ItemSuccess(verdict, TokenUsage(prompt, _COMPLETION_TOKENS), cost_usd=0.0)

    async def aclose(self) -> None:
        """Nothing to release."""


def _tokens(text: str) -> int:
    # The usual rule of thumb: about four characters per token.
    return (len(text) + 3) // 4
