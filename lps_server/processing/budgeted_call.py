"""A granted provider call: the provider for one bundle that was granted rate budget.

It calls the provider with a report, and afterwards settles the grant with what the provider
said (`GrantKeeper.settle`, the budget gate in `budget_wait.py`). A call held up past its grant's
margin before it goes is granted afresh first; a call that is not sent after all is withdrawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lps_server.budgets.base import Grant, margin
from lps_server.core.domain import Overrides, Route
from lps_server.core.rates import RateBudget, RateCounts
from lps_server.providers import ComparisonItem, ItemOutcome
from lps_server.providers.call_report import CallReport
from lps_server.providers.http_provider import HttpProvider


class GrantKeeper(Protocol):
    """What a granted call needs of the budget gate."""

    def now(self) -> float: ...

    async def regrant(self, scope: Scope, grant: Grant) -> Grant: ...

    async def settle(self, scope: Scope, grant: Grant, report: CallReport) -> None: ...

    async def withdraw(self, scope: Scope, grant: Grant) -> None: ...


class BudgetedCall:
    """A provider, for one granted bundle: calls it with a report, then settles the grant."""

    #: The provider's report reaches the caller too (`ReportingProvider`).
    reports_calls = True

    def __init__(self, gate: GrantKeeper, provider: HttpProvider, grant: Grant, scope: Scope):
        self._gate = gate
        self._provider = provider
        self._grant = grant
        self._granted_at = gate.now()
        self._scope = scope
        self._report: CallReport | None = None
        self.name = provider.name
        self.default_model = provider.default_model

    def known_models(self) -> frozenset[str]:
        """The provider's known models."""
        return self._provider.known_models()

    async def compare(
        self,
        items: Sequence[ComparisonItem],
        *,
        model: str,
        overrides: Overrides,
        report: CallReport | None = None,
    ) -> list[ItemOutcome]:
        """The provider's answer; `settle_grant` then settles the grant with what the provider
        said (`report`, when given, is the one the provider fills)."""
        if self._gate.now() - self._granted_at > margin(self._scope.budget.window_s):
            # Held up since its grant (a frozen process, a stalled queue): the budget may have
            # forgotten the grant while the provider has not yet seen the call.
            self._grant = await self._gate.regrant(self._scope, self._grant)
        report = report if report is not None else CallReport()
        self._report = report
        return await self._provider.compare(items, model=model, overrides=overrides, report=report)

    async def settle_grant(self) -> None:
        """Settle the grant with the provider's count and headers, once, after `compare`.

        The runner calls it once the results are stored: budget bookkeeping must not hold the
        results back (during a Redis stall it would cost them a command timeout first).
        """
        report, self._report = self._report, None
        if report is not None:
            await self._gate.settle(self._scope, self._grant, report)

    async def withdraw(self) -> None:
        """The call was not sent (its requests went back to the queue unsent): the grant counts
        nothing from now on, instead of its estimate for a window."""
        self._report = None
        await self._gate.withdraw(self._scope, self._grant)

    async def aclose(self) -> None:
        """The provider is closed by its registry."""


@dataclass
class Scope:
    """One budget: a provider's model, its budget settings and what this replica learned."""

    key: str
    route: Route
    budget: RateBudget
    labels: dict[str, str]
    limits_seen: RateCounts = field(default_factory=RateCounts)
    scale: float = 1.0
    waiting_since: float | None = None
