"""What every HTTP provider shares: one call per bundle (or per item), timeouts, the circuit
breaker, error translation, answer parsing, and token and cost accounting.

The adapters (`openai_compat`, `anthropic`) only say how a prompt becomes an HTTP request and where
the answer and usage sit in the response. Retries are not done here: the bundle runner retries the
items that failed retryably, with backoff that honours `retry_after`, and limits concurrent calls
per provider (LPS_MAX_CONCURRENT_CALLS), so an adapter makes exactly one attempt per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from lps_server.core.domain import CircuitState, ErrorCode, Overrides, ProviderName
from lps_server.providers.base import (
    ComparisonItem,
    ItemFailure,
    ItemOutcome,
    ItemSuccess,
    ProviderCallError,
)
from lps_server.providers.circuit_breaker import CircuitBreaker, CircuitListener
from lps_server.providers.http_errors import error_for_status, error_for_transport
from lps_server.providers.http_settings import BundleCalls, HttpProviderSettings
from lps_server.providers.prompting import Prompt, build_prompt, parse_answer, split_usage

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


@dataclass(frozen=True, slots=True)
class ProviderReply:
    """What an adapter found in a successful response: the structured answer and token usage."""

    answer: object
    prompt_tokens: int
    completion_tokens: int


class HttpProvider(ABC):
    """A provider reached over HTTP; subclasses build the request and read the response.

    Args:
        settings: the provider's settings (URL, key, model, timeout, breaker, prices).
        client: an httpx client to use (one is created, and closed by `aclose`, by default).
        clock: monotonic time source for the circuit breaker.
        on_circuit_state: called with the provider and its new state on every breaker transition.
    """

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

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        """Judge every item: one HTTP call for all, or one per item in `sequential` mode.

        Raises:
            ProviderCallError: the (single) call failed as a whole.
        """
        if not items:
            return []
        if self._settings.bundle_calls is BundleCalls.ONE_CALL or len(items) == 1:
            return await self._call(items, model=model, overrides=overrides)
        outcomes: list[ItemOutcome] = []
        for position, item in enumerate(items):
            try:
                outcomes.extend(await self._call([item], model=model, overrides=overrides))
            except ProviderCallError as exc:
                outcomes.append(exc.failure)
                if exc.failure.code in _STOP_SEQUENCE:
                    outcomes.extend([exc.failure] * (len(items) - position - 1))
                    break
        return outcomes

    async def _call(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        prompt = build_prompt(items, system_prompt=overrides.system_prompt)
        # A request's max_tokens is its own answer budget, so a bundle's budget scales with N.
        per_item = overrides.max_tokens or self._settings.max_tokens_per_item
        call = self._request(
            prompt,
            model=model,
            max_tokens=per_item * len(items),
            temperature=overrides.temperature,
        )
        started = time.monotonic()
        try:
            async with self._breaker.guard():
                response = await self._post(call)
            reply = self._reply(self._json(response))
        except ProviderCallError as exc:
            log.warning(
                "%s call failed: %s",
                self.name.value,
                exc.failure.message,
                extra={"provider": self.name.value, "model": model, "items": len(items)},
            )
            raise
        verdicts = parse_answer(reply.answer, len(items))
        usages = split_usage(reply.prompt_tokens, reply.completion_tokens, len(items))
        outcomes: list[ItemOutcome] = []
        for verdict, usage in zip(verdicts, usages, strict=True):
            if isinstance(verdict, ItemFailure):
                outcomes.append(verdict)
            else:
                cost = self._settings.prices.cost(model, usage)
                outcomes.append(ItemSuccess(verdict, usage, cost))
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
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
            },
        )
        return outcomes

    async def _post(self, call: HttpCall) -> httpx.Response:
        """Send the request; a non-error response, or ProviderCallError."""
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
        if response.status_code >= 400:
            raise error_for_status(self.name, response, secret=self._settings.api_key)
        return response

    def _json(self, response: httpx.Response) -> object:
        try:
            return response.json()
        except ValueError:
            raise self.invalid(f"HTTP {response.status_code} body is not JSON") from None

    def invalid(self, reason: str) -> ProviderCallError:
        """A whole-call INVALID_RESPONSE failure naming this provider."""
        return ProviderCallError(ErrorCode.INVALID_RESPONSE, f"{self.name.value}: {reason}")

    @abstractmethod
    def _request(
        self, prompt: Prompt, *, model: str, max_tokens: int, temperature: float | None
    ) -> HttpCall:
        """The HTTP request that asks `model` for a structured answer to `prompt`."""

    @abstractmethod
    def _reply(self, body: object) -> ProviderReply:
        """The structured answer and usage in a response body.

        Raises:
            ProviderCallError: INVALID_RESPONSE when the body has no usable answer.
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
