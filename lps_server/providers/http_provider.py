"""What every HTTP provider shares: one call per bundle (or per item), timeouts, the circuit
breaker, error translation, answer parsing, and token and cost accounting.

The adapters (`openai_compat`, `anthropic`) only say how a prompt becomes an HTTP request and where
the answer and usage sit in the response. Retries are not done here: the bundle runner retries the
items that failed retryably, with backoff that honours `retry_after`, and limits concurrent calls
per provider (LPS_MAX_CONCURRENT_CALLS), so an adapter makes exactly one attempt per call.

For the rate budget a provider also says how large a call will be (`size`) and which budget it
draws from (`budget`), and reports, per `compare`, what its responses said (`CallReport`) and what
each call was billed: the usage of every answered call, whether or not its answer was usable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from lps_server.core.domain import CircuitState, ErrorCode, Overrides, ProviderName, TokenUsage
from lps_server.core.rates import RateBudget, RateCounts
from lps_server.providers.base import (
    ComparisonItem,
    ItemFailure,
    ItemOutcome,
    ItemSuccess,
    ProviderCallError,
)
from lps_server.providers.call_report import (
    MESSAGE_OVERHEAD_TOKENS,
    CallReport,
    call_cost,
    estimate_tokens,
)
from lps_server.providers.circuit_breaker import CircuitBreaker, CircuitListener
from lps_server.providers.http_errors import error_for_status, error_for_transport
from lps_server.providers.http_settings import BundleCalls, HttpProviderSettings
from lps_server.providers.pricing import NO_CACHE_DISCOUNT, CacheRule
from lps_server.providers.prompting import (
    Prompt,
    answer_schema,
    build_prompt,
    parse_answer,
    split_usage,
)
from lps_server.providers.rate_limit_headers import read_rate_limits

log = logging.getLogger(__name__)

#: Whole-call failures after which the rest of a sequential bundle is not attempted: the provider
#: is throttling or down, and further calls would only fail the same way (and feed the breaker).
_STOP_SEQUENCE = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.PROVIDER_UNAVAILABLE, ErrorCode.TIMEOUT}
)


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One HTTP request to make: the path below the base URL, headers and JSON body."""

    path: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]


class UnusableAnswer(Exception):
    """A response body holds no usable answer; the message says why."""


@dataclass(frozen=True, slots=True)
class ProviderReply:
    """What an adapter found in a successful response: the structured answer, the token usage
    by kind, and the input tokens the provider's input rate limit counts for the call."""

    answer: object
    usage: TokenUsage
    rate_input_tokens: int


class HttpProvider(ABC):
    """A provider reached over HTTP; subclasses build the request and read the response.

    `cache_rule` prices cached tokens of models whose price-table entry lists no cache prices.

    Args:
        settings: the provider's settings (URL, key, model, timeout, breaker, prices).
        client: an httpx client to use (one is created, and closed by `aclose`, by default).
        clock: monotonic time source for the circuit breaker.
        on_circuit_state: called with the provider and its new state on every breaker transition.
    """

    cache_rule: CacheRule = NO_CACHE_DISCOUNT
    #: Every call's billed usage goes to the `CallReport` (`ReportingProvider`).
    reports_calls = True

    def __init__(
        self,
        settings: HttpProviderSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_circuit_state: CircuitListener | None = None,
    ) -> None:
        self._settings = settings
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s), follow_redirects=False
        )
        self._breaker = CircuitBreaker(
            settings.provider,
            threshold=settings.breaker_threshold,
            cooldown_s=settings.breaker_cooldown_s,
            clock=clock,
            on_state_change=on_circuit_state,
            trial_wait_s=settings.timeout_s,
        )

    def __repr__(self) -> str:
        s = self._settings
        return f"{type(self).__name__}(provider={s.provider.value!r}, base_url={s.base_url!r})"

    @property
    def name(self) -> ProviderName:
        """The provider these settings configure."""
        return self._settings.provider

    @property
    def default_model(self) -> str:
        """The model when a request names none."""
        return self._settings.default_model

    def known_models(self) -> frozenset[str]:
        """The default model and the priced models."""
        return self._settings.known_models()

    @property
    def circuit_state(self) -> CircuitState:
        """The state of this provider's circuit breaker."""
        return self._breaker.state

    def budget(self, model: str) -> RateBudget:
        """The rate budget calls to `model` draw from, and how large one call may be."""
        return self._settings.budgets.for_model(model)

    def call_sizes(
        self, items: Sequence[ComparisonItem], *, overrides: Overrides
    ) -> list[RateCounts]:
        """What each HTTP call of judging `items` will ask of the rate budget: a request, and
        estimated prompt tokens plus the answer allowance (one call, or one per item when calls
        are sequential)."""
        if self._settings.bundle_calls is BundleCalls.ONE_CALL or len(items) <= 1:
            return [self._call_size(items, overrides)]
        return [self._call_size([item], overrides) for item in items]

    def _call_size(self, items: Sequence[ComparisonItem], overrides: Overrides) -> RateCounts:
        prompt = build_prompt(items, system_prompt=overrides.system_prompt)
        return call_cost(self.input_estimate(prompt), self._allowance(len(items), overrides))

    def input_estimate(self, prompt: Prompt) -> int:
        """Estimated prompt tokens of a call: its messages and the answer format."""
        schema = json.dumps(answer_schema())
        text_tokens = estimate_tokens(prompt.system + prompt.user + schema)
        return text_tokens + 2 * MESSAGE_OVERHEAD_TOKENS

    def _allowance(self, count: int, overrides: Overrides) -> int:
        # A request's max_tokens is its own answer budget, so a bundle's budget scales with N.
        return (overrides.max_tokens or self._settings.max_tokens_per_item) * count

    async def compare(
        self,
        items: Sequence[ComparisonItem],
        *,
        model: str,
        overrides: Overrides,
        report: CallReport | None = None,
    ) -> list[ItemOutcome]:
        """Judge every item: one HTTP call for all, or one per item in `sequential` mode.

        `report`, when given, is told what every HTTP call cost, what the provider billed for it
        and what its response said about rate limits.

        Raises:
            ProviderCallError: the (single) call failed as a whole.
        """
        if not items:
            return []
        report = report if report is not None else CallReport()
        if self._settings.bundle_calls is BundleCalls.ONE_CALL or len(items) == 1:
            return await self._call(items, model=model, overrides=overrides, report=report)
        outcomes: list[ItemOutcome] = []
        for position, item in enumerate(items):
            try:
                outcomes.extend(
                    await self._call([item], model=model, overrides=overrides, report=report)
                )
            except ProviderCallError as exc:
                outcomes.append(exc.failure)
                if exc.failure.code in _STOP_SEQUENCE:
                    outcomes.extend([exc.failure] * (len(items) - position - 1))
                    break
        return outcomes

    async def _call(
        self,
        items: Sequence[ComparisonItem],
        *,
        model: str,
        overrides: Overrides,
        report: CallReport,
    ) -> list[ItemOutcome]:
        prompt = build_prompt(items, system_prompt=overrides.system_prompt)
        allowance = self._allowance(len(items), overrides)
        estimate = self.input_estimate(prompt)
        call = self._request(
            prompt, model=model, max_tokens=allowance, temperature=overrides.temperature
        )
        started = time.monotonic()
        report.calls += 1
        try:
            async with self._breaker.guard():
                response = await self._post(call, report)
            reply = self._reply(self._json(response))
        except ProviderCallError as exc:
            # Whether the provider counted a call it did not answer is unknown: assume it did.
            report.counted += call_cost(estimate, allowance)
            if exc.usage is not None:  # answered unusably, and billed all the same
                self._bill(report, model, exc.usage)
            log.warning(
                "%s call failed: %s",
                self.name.value,
                exc.failure.message,
                extra={"provider": self.name.value, "model": model, "items": len(items)},
            )
            raise
        usage = reply.usage
        # Billed before the answer is read: an answer that fails in part or as a whole is paid.
        self._bill(report, model, usage)
        report.counted += self._counted(reply, allowance)
        report.estimated_input += estimate
        report.reported_input += usage.prompt_tokens
        verdicts = parse_answer(reply.answer, len(items))
        usages = split_usage(usage, len(items))
        outcomes: list[ItemOutcome] = []
        for verdict, share in zip(verdicts, usages, strict=True):
            if isinstance(verdict, ItemFailure):
                outcomes.append(verdict)
            else:
                cost = self._settings.prices.cost(model, share, rule=self.cache_rule)
                outcomes.append(ItemSuccess(verdict, share, cost))
        log.debug(
            "%s call answered %d items in %.3fs",
            self.name.value,
            len(items),
            time.monotonic() - started,
            extra={
                "provider": self.name.value,
                "model": model,
                "items": len(items),
                "failed_items": sum(isinstance(o, ItemFailure) for o in outcomes),
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
            },
        )
        return outcomes

    def _bill(self, report: CallReport, model: str, usage: TokenUsage) -> None:
        report.bill(usage, self._settings.prices.cost(model, usage, rule=self.cache_rule))

    def _counted(self, reply: ProviderReply, allowance: int) -> RateCounts:
        """What the provider counted against its limits for an answered call: the prompt as it
        counts it plus the allowance (reserved at admission), and the output it produced."""
        counted_input = reply.rate_input_tokens
        return RateCounts(
            requests=1,
            tokens=counted_input + allowance,
            input_tokens=counted_input,
            output_tokens=reply.usage.completion_tokens,
        )

    async def _post(self, call: HttpCall, report: CallReport) -> httpx.Response:
        """Send the request; a non-error response, or ProviderCallError. What the response's
        headers say about rate limits goes to `report`, whatever its status."""
        timeout_s = self._settings.timeout_s
        try:
            # httpx's timeout bounds each phase (connect, each read); this bounds the whole call,
            # so a server trickling bytes cannot hold a bundle past the setting.
            async with asyncio.timeout(timeout_s):
                response = await self._client.post(
                    self._settings.base_url + call.path, headers=dict(call.headers), json=call.body
                )
        except (httpx.RequestError, TimeoutError) as exc:
            # `from None`: httpx errors hold the request, headers included.
            raise error_for_transport(self.name, exc, timeout_s=timeout_s) from None
        reading = read_rate_limits(response.headers)
        if reading is not None:
            report.readings.append(reading)
        if response.status_code == 429:
            report.rate_limited += 1
        if response.status_code >= 400:
            raise error_for_status(self.name, response, secret=self._settings.api_key)
        return response

    def _json(self, response: httpx.Response) -> object:
        try:
            return response.json()
        except ValueError:
            raise self.invalid(f"HTTP {response.status_code} body is not JSON") from None

    def invalid(self, reason: str, *, usage: TokenUsage | None = None) -> ProviderCallError:
        """A whole-call INVALID_RESPONSE failure naming this provider; `usage` is what the
        provider reported for the call when it answered it (unusably)."""
        return ProviderCallError(
            ErrorCode.INVALID_RESPONSE, f"{self.name.value}: {reason}", usage=usage
        )

    @abstractmethod
    def _request(
        self, prompt: Prompt, *, model: str, max_tokens: int, temperature: float | None
    ) -> HttpCall:
        """The HTTP request that asks `model` for a structured answer to `prompt`."""

    def _reply(self, body: object) -> ProviderReply:
        """The structured answer and usage in a response body.

        Raises:
            ProviderCallError: INVALID_RESPONSE when the body has no usable answer, carrying the
                usage it reports (the provider billed the call) when it is a JSON object.
        """
        if not isinstance(body, dict):
            raise self.invalid("response is not a JSON object")
        usage, rate_input_tokens = self._usage(body)
        try:
            answer = self._answer(body)
        except UnusableAnswer as exc:
            raise self.invalid(str(exc), usage=usage) from None
        return ProviderReply(answer, usage, rate_input_tokens)

    @abstractmethod
    def _usage(self, body: dict[str, Any]) -> tuple[TokenUsage, int]:
        """The token usage a response body reports by kind (zeros where it says nothing), and
        the input tokens the provider's input rate limit counts for the call."""

    @abstractmethod
    def _answer(self, body: dict[str, Any]) -> object:
        """The structured answer in a response body.

        Raises:
            UnusableAnswer: the body has no usable answer.
        """

    async def aclose(self) -> None:
        """Close the HTTP client if this provider created it."""
        if self._owns_client:
            await self._client.aclose()


def usage_field(usage: object, *names: str) -> int:
    """The sum of the integer fields `names` of a usage object; missing fields count 0."""
    if not isinstance(usage, dict):
        return 0
    values = (usage.get(name) for name in names)
    return sum(v for v in values if isinstance(v, int) and not isinstance(v, bool))
