"""Waiting for rate budget: a leased bundle is sized, split to fit and granted budget before it
takes its call, or it goes back to the queue and its provider pauses.

The decision is taken at lease time, right after the bundle is leased (and filled), before any
provider call: the bundle's tokens are estimated (prompt plus answer allowance), the bundle is cut
to the largest prefix that one call may carry and the budget can ever grant (the rest goes back to
the queue, in its place, to lead the next bundle: split, never failed), and the store is asked
for budget. When the window has no room, the whole bundle goes back to the queue at once and its
provider is paused (left out of leases) until the store says there will be room. So items waiting
for budget hold nothing: no call slot, no lease that could lapse, no task; the next lease after the
pause takes them again, from their place at the head of the queue.

The granted call is wrapped (`BudgetedCall`): once the provider answered and its results are stored,
the grant is settled with
the provider's count and headers (`BudgetStore.settle`), 429s are counted, and this replica's
estimate is calibrated against the provider's count of the prompt. A granted call that is not sent
after all (its `called` mark could not be written) is withdrawn: settled as costing nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lps_server.budgets import BudgetStore
from lps_server.budgets.base import (
    BudgetState,
    BudgetUnavailableError,
    Decision,
    Grant,
    Settlement,
)
from lps_server.core.domain import Overrides, ProviderName, QueuedRequest, Route
from lps_server.core.rates import RateCounts
from lps_server.observability.metrics import LpsMetrics
from lps_server.processing.budgeted_call import BudgetedCall, Scope
from lps_server.providers import ProviderRegistry
from lps_server.providers.base import comparison_items
from lps_server.providers.call_report import CallReport
from lps_server.providers.http_provider import HttpProvider

log = logging.getLogger(__name__)
# While the budget store cannot be reached, a provider's work waits this long between tries.
UNAVAILABLE_PAUSE_S = 0.5
# The longest the dispatcher waits for a budget's answer (a script of a few milliseconds): past
# it the store counts as unreachable for now. A grant it made meanwhile stays counted for a
# window, on the safe side.
ACQUIRE_TIMEOUT_S = 0.5
# A call held up past its grant's margin waits at most this many windows for a fresh grant.
REGRANT_WAIT_WINDOWS = 2
# How far one call's prompt count may move this replica's estimate scale, and its bounds.
CALIBRATION_WEIGHT = 0.3
CALIBRATION_RANGE = (0.5, 2.0)


@dataclass
class Admission:
    """What to do with a leased bundle.

    Attributes:
        items: to call now (a prefix of the bundle).
        put_back: to give back to the queue at once (split off, or all of it while waiting).
        too_large: items no call could ever carry, with the reason: they end FAILED.
        call: the budgeted provider to call `items` with (None: the provider has no budget).
    """

    items: list[QueuedRequest]
    put_back: list[QueuedRequest] = field(default_factory=list)
    too_large: list[tuple[QueuedRequest, str]] = field(default_factory=list)
    call: BudgetedCall | None = None


class BudgetGate:
    """Sizes, splits and grants leased bundles, and pauses providers that wait for budget.

    Args:
        store: where budgets are kept (shared by replicas with Redis).
        providers: the registry (only HTTP providers have budgets).
        metrics: where budget use, waits and 429s are recorded.
        on_open: called when a paused provider may be leased again (wakes the dispatcher).
        max_block_s: the longest a 429 closes a budget (LPS_RETRY_AFTER_MAX_SECONDS).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        *,
        store: BudgetStore,
        providers: ProviderRegistry,
        metrics: LpsMetrics,
        on_open: Callable[[], None],
        max_block_s: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._max_block_s = max_block_s
        self._providers = providers
        self._metrics = metrics
        self._on_open = on_open
        self._clock = clock
        self._paused: dict[ProviderName, float] = {}
        self._scopes: dict[str, Scope] = {}

    def paused(self) -> frozenset[ProviderName]:
        """The providers whose work waits for budget now: leases leave them out."""
        now = self._clock()
        return frozenset(p for p, until in self._paused.items() if until > now)

    def next_open_in(self) -> float | None:
        """Seconds until the first paused provider may be leased again, None when none is."""
        now = self._clock()
        waits = [until - now for until in self._paused.values() if until > now]
        return min(waits) if waits else None

    def _pause(self, provider: ProviderName, seconds: float) -> None:
        until = self._clock() + seconds
        if until <= self._paused.get(provider, 0.0):
            return
        self._paused[provider] = until
        asyncio.get_running_loop().call_later(seconds, self._on_open)

    def _scope(self, route: Route, provider: HttpProvider) -> Scope:
        key = f"{route.provider.value}:{route.model}"
        scope = self._scopes.get(key)
        if scope is None:
            labels = {"provider": route.provider.value, "model": self._providers.model_label(route)}
            scope = Scope(key, route, provider.budget(route.model), labels)
            self._scopes[key] = scope
        return scope

    async def admit(self, bundle: Sequence[QueuedRequest]) -> Admission:
        """Size the bundle, split it to fit, and ask for budget (see the module docstring)."""
        items = list(bundle)  # the admission's lists never alias the caller's
        if not items:
            return Admission(items)
        route = items[0].route
        provider = self._providers.http(route.provider)
        if provider is None:
            return Admission(items)
        scope = self._scope(route, provider)
        overrides = items[0].request.overrides
        for _ in range(3):  # a refusal as "never" teaches the limits; then fit again
            fitted, reason = self._fit(provider, scope, items, overrides)
            if not fitted:
                return Admission([], put_back=items[1:], too_large=[(items[0], reason)])
            need = self._need(provider, scope, fitted, overrides)
            try:
                # Bounded well below the store's command timeout: the dispatcher waits for
                # this answer, and every provider's work waits with it.
                async with asyncio.timeout(ACQUIRE_TIMEOUT_S):
                    decision = await self._acquire(scope, need)
            except (BudgetUnavailableError, TimeoutError) as exc:
                cause = str(exc) or f"no answer in {ACQUIRE_TIMEOUT_S} s"
                log.warning("rate budget unavailable, %s waits: %s", route.provider.value, cause)
                self._pause(route.provider, UNAVAILABLE_PAUSE_S)
                return Admission([], put_back=items)
            self._observe(scope, decision.state)
            if decision.grant is not None:
                waited = 0.0 if scope.waiting_since is None else self._clock() - scope.waiting_since
                scope.waiting_since = None
                self._metrics.budget_wait.labels(**scope.labels).observe(waited)
                call = BudgetedCall(self, provider, decision.grant, scope)
                return Admission(fitted, put_back=items[len(fitted) :], call=call)
            if not decision.never:
                if scope.waiting_since is None:
                    scope.waiting_since = self._clock()
                self._pause(route.provider, decision.wait_s)
                return Admission([], put_back=items)
        return Admission([], put_back=items[1:], too_large=[(items[0], _never(scope))])

    def _fit(
        self,
        provider: HttpProvider,
        scope: Scope,
        items: list[QueuedRequest],
        overrides: Overrides,
    ) -> tuple[list[QueuedRequest], str]:
        """The longest prefix of `items` that one call may carry and the budget can grant.

        A comparison too large only for a limit the provider announced goes alone: the store
        makes it wait until that limit is forgotten (the provider may have raised it since), so
        that only a configured limit or the call's own size ever fails a comparison unsent."""
        in_force = scope.budget.limits.tightest(scope.limits_seen)

        def problem(k: int, limits: RateCounts = in_force) -> str:
            """Why a call of the first k items cannot be sent; "" when it can."""
            sizes = [
                self._scaled(s, scope.scale)
                for s in provider.call_sizes(comparison_items(items[:k]), overrides=overrides)
            ]
            return self._too_large(scope, sizes, limits)

        if not problem(len(items)):
            return items, ""
        fitting, failing = 0, len(items)  # more items never make a call smaller
        while failing - fitting > 1:
            middle = (fitting + failing) // 2
            if problem(middle):
                failing = middle
            else:
                fitting = middle
        if fitting:
            return items[:fitting], ""
        alone = problem(1, scope.budget.limits)
        return ([], alone) if alone else (items[:1], "")

    def _too_large(self, scope: Scope, sizes: list[RateCounts], limits: RateCounts) -> str:
        """Why calls of these sizes cannot be sent under `limits` ("" when they can)."""
        budget = scope.budget
        for size in sizes:
            if budget.max_input_tokens and size.input_tokens > budget.max_input_tokens:
                return (
                    f"its prompt of about {size.input_tokens} tokens exceeds the "
                    f"{budget.max_input_tokens} tokens one call may carry "
                    f"(MAX_INPUT_TOKENS_PER_CALL of {scope.route.provider.value})"
                )
            context = size.input_tokens + size.output_tokens
            if budget.context_tokens and context > budget.context_tokens:
                return (
                    f"its prompt and answer of about {context} tokens exceed the "
                    f"{budget.context_tokens}-token context of {scope.route.model}"
                )
        total = RateCounts()
        for size in sizes:
            total += size
        if over := total.exceeds(limits):
            return _never(scope, over, total, limits)
        return ""

    def _need(
        self,
        provider: HttpProvider,
        scope: Scope,
        items: list[QueuedRequest],
        overrides: Overrides,
    ) -> RateCounts:
        total = RateCounts()
        for size in provider.call_sizes(comparison_items(items), overrides=overrides):
            total += self._scaled(size, scope.scale)
        return total

    @staticmethod
    def _scaled(size: RateCounts, scale: float) -> RateCounts:
        """The estimate with its prompt part scaled by what the provider's counts taught."""
        prompt = math.ceil(size.input_tokens * scale)
        return RateCounts(
            size.requests, size.tokens - size.input_tokens + prompt, prompt, size.output_tokens
        )

    async def _acquire(self, scope: Scope, need: RateCounts) -> Decision:
        return await self._store.acquire(
            scope.key, need=need, limits=scope.budget.limits, window_s=scope.budget.window_s
        )

    async def _settle(self, scope: Scope, grant: Grant, settlement: Settlement) -> BudgetState:
        return await self._store.settle(
            grant, settlement, limits=scope.budget.limits, window_s=scope.budget.window_s
        )

    def _observe(self, scope: Scope, state: BudgetState) -> None:
        scope.limits_seen = state.limits
        self._metrics.record_budget(
            scope.labels, used=state.used.values(), limits=state.limits.values()
        )

    async def settle(self, scope: Scope, grant: Grant, report: CallReport) -> None:
        """After a granted call: the provider's count and headers go to the store."""
        if report.rate_limited:
            self._metrics.rate_limited.labels(**scope.labels).inc(report.rate_limited)
        if report.estimated_input > 0 and report.reported_input > 0:
            ratio = report.reported_input / report.estimated_input
            scale = (1 - CALIBRATION_WEIGHT) * scope.scale + CALIBRATION_WEIGHT * ratio
            scope.scale = min(max(scale, CALIBRATION_RANGE[0]), CALIBRATION_RANGE[1])
        counted = report.counted if report.calls else grant.need
        settlement = Settlement(
            counted,
            report.readings,
            report.rate_limited > 0,
            max_block_s=self._max_block_s,
        )
        try:
            state = await self._settle(scope, grant, settlement)
        except BudgetUnavailableError as exc:
            log.warning("could not settle a rate budget grant; its estimate stands: %s", exc)
            return
        except Exception:
            # The results are stored: bookkeeping must never fail them; the estimate stands.
            log.exception("settling a rate budget grant failed; its estimate stands")
            return
        self._observe(scope, state)
        if (block := settlement.block_s()) > 0:
            self._pause(scope.route.provider, block)

    def now(self) -> float:
        """The gate's clock (monotonic seconds)."""
        return self._clock()

    async def regrant(self, scope: Scope, grant: Grant) -> Grant:
        """A fresh grant for a call held up past its margin since `grant` (which is withdrawn):
        granted now, it counts from now, as the provider will. Waits for room as a granted call
        would have, at most REGRANT_WAIT_WINDOWS windows; past that, or when the store cannot
        be reached, the call goes on its old grant (its 429, if any, is retried as any)."""
        await self.withdraw(scope, grant)
        deadline = self._clock() + REGRANT_WAIT_WINDOWS * scope.budget.window_s
        while True:
            try:
                decision = await self._acquire(scope, grant.need)
            except BudgetUnavailableError as exc:
                log.warning("could not renew a late rate budget grant: %s", exc)
                return grant
            self._observe(scope, decision.state)
            if decision.grant is not None:
                return decision.grant
            left = deadline - self._clock()
            if decision.never or left <= 0:
                return grant
            await asyncio.sleep(min(decision.wait_s, left))

    async def withdraw(self, scope: Scope, grant: Grant) -> None:
        """A granted call that was never sent: its grant is settled as costing nothing."""
        try:
            state = await self._settle(scope, grant, Settlement(RateCounts()))
        except BudgetUnavailableError as exc:
            # Conservative: the provider's budget has less room than it could for one window.
            log.warning(
                "could not withdraw the rate budget grant of a call not sent; it counts for "
                "one window: %s",
                exc,
            )
            return
        self._observe(scope, state)


def _never(
    scope: Scope,
    kinds: Sequence[str] = (),
    need: RateCounts | None = None,
    limits: RateCounts | None = None,
) -> str:
    if not kinds or need is None or limits is None:
        return f"it asks more than the whole rate budget of {scope.key} can ever grant"
    parts = [
        f"{getattr(need, k)} {k.replace('_', ' ')} against a budget of {getattr(limits, k)}"
        for k in kinds
    ]
    return (
        f"it asks more than the whole rate budget of {scope.key} per window can ever grant: "
        + ", ".join(parts)
    )
