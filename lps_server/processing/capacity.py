"""Room per provider: how many bundles each provider may have in flight on this replica.

Each configured provider may hold `LPS_MAX_CONCURRENT_CALLS` bundles at once, from the moment the
bundle is leased until its results are stored; nothing is shared between providers. The
dispatcher leases only work whose provider has room (`full()` is what a lease excludes), so a
slow, throttled or failing provider holds only its own share and never delays another provider's
work. This is the one place that decides whether a provider may take more work now; a rate budget
that makes dispatch wait before calling a provider belongs here as well, so that waiting for it
holds nothing another provider could use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lps_server.core.domain import ProviderName


class ProviderCapacity:
    """Bundles in flight per provider, against one limit each.

    Args:
        providers: the configured providers; each gets `limit` bundles.
        limit: LPS_MAX_CONCURRENT_CALLS.
        on_room: called when a full provider gets room again, so a waiting dispatcher looks
            again (only then: waking it at every bundle's end would cut its blocking reads short).
    """

    def __init__(
        self,
        providers: Iterable[ProviderName],
        limit: int,
        *,
        on_room: Callable[[], None] = lambda: None,
    ) -> None:
        self._limit = limit
        self._in_flight = dict.fromkeys(providers, 0)
        self._on_room = on_room

    def full(self) -> frozenset[ProviderName]:
        """The configured providers with no room for another bundle."""
        return frozenset(p for p, n in self._in_flight.items() if n >= self._limit)

    def all_full(self) -> bool:
        """True when no configured provider has room: there is nothing to lease."""
        return all(n >= self._limit for n in self._in_flight.values())

    def take(self, provider: ProviderName) -> None:
        """Count a bundle leased for `provider`. Work for a provider not configured here is not
        counted: its bundles end at once (FAILED, configuration)."""
        if provider in self._in_flight:
            self._in_flight[provider] += 1

    def give_back(self, provider: ProviderName) -> None:
        """A bundle of `provider` ended."""
        if provider not in self._in_flight:
            return
        was_full = self._in_flight[provider] >= self._limit
        self._in_flight[provider] -= 1
        if was_full:
            self._on_room()
