"""Rate budgets kept in this process: the budget store of a replica with the in-process queue.

The same rules as the Redis store's script (`budgets/base.py`), on the replica's monotonic clock.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from lps_server.budgets.base import (
    MIN_WAIT_S,
    RATIO_WINDOWS,
    BudgetState,
    Decision,
    Grant,
    Settlement,
    blend,
    counts_of,
    member,
    scaled,
    span,
)
from lps_server.core.rates import RateCounts


@dataclass
class _Window:
    """One budget: its log of entries (stamp, name) in stamp order, sums and learned facts."""

    entries: list[tuple[float, str]] = field(default_factory=list)
    used: RateCounts = field(default_factory=RateCounts)
    learned: RateCounts = field(default_factory=RateCounts)
    learned_at: float = -math.inf
    blocked_until: float = 0.0
    ratios: list[float] = field(default_factory=lambda: [0.0] * 4)
    ratios_at: float = -math.inf

    def learned_until(self, window_s: float) -> float:
        """Until when the learned limits bind: RATIO_WINDOWS windows after the provider last
        announced one."""
        return self.learned_at + RATIO_WINDOWS * window_s

    def in_force(self, configured: RateCounts, now: float, window_s: float) -> RateCounts:
        """The limits in force: the tighter of the configured and the learned ones, the
        learned ones only until `learned_until`."""
        if self.learned_until(window_s) > now:
            return configured.tightest(self.learned)
        return configured

    def prune(self, cutoff: float) -> None:
        keep = 0
        while keep < len(self.entries) and self.entries[keep][0] <= cutoff:
            self.used = _minus(self.used, counts_of(self.entries[keep][1]))
            keep += 1
        del self.entries[:keep]

    def add(self, stamp: float, name: str) -> None:
        # Stamps only grow (one clock), so appending keeps the log in order.
        self.entries.append((stamp, name))
        self.used += counts_of(name)

    def replace(self, name: str, new: str) -> None:
        """The entry `name` holds `new`'s counts from now on, at its own stamp."""
        for i, (stamp, entry) in enumerate(self.entries):
            if entry == name:
                self.entries[i] = (stamp, new)
                self.used = _minus(self.used, counts_of(name)) + counts_of(new)
                return


def _minus(a: RateCounts, b: RateCounts) -> RateCounts:
    return RateCounts.of([x - y for x, y in zip(a.values(), b.values(), strict=True)])


class LocalBudgetStore:
    """A BudgetStore in process memory.

    Args:
        clock: monotonic seconds.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    async def acquire(
        self, scope: str, *, need: RateCounts, limits: RateCounts, window_s: float
    ) -> Decision:
        """See BudgetStore.acquire."""
        exact, window_s = window_s, span(window_s)
        now = self._clock()
        w = self._windows.setdefault(scope, _Window())
        w.prune(now - window_s)
        in_force = w.in_force(limits, now, window_s)
        state = BudgetState(w.used, in_force)
        if w.blocked_until > now:
            return Decision(state, wait_s=w.blocked_until - now)
        if never := need.exceeds(limits):
            return Decision(state, never=tuple(never))
        if need.exceeds(in_force):  # only a learned limit: wait until it is forgotten
            return Decision(state, wait_s=max(MIN_WAIT_S, w.learned_until(window_s) - now))
        fresh_until = w.ratios_at + RATIO_WINDOWS * window_s
        room = scaled(in_force, w.ratios) if fresh_until > now else in_force
        if not (w.used + need).exceeds(room):
            grant_id = uuid.uuid4().hex
            w.add(now, member(grant_id, need))
            # What the provider's own window holds of ours: the log less its margin's entries.
            seen = RateCounts()
            for stamp, name in w.entries:
                if stamp > now - exact:
                    seen += counts_of(name)
            grant = Grant(scope, grant_id, need, seen=seen)
            return Decision(BudgetState(w.used, in_force), grant=grant)
        wait = self._wait(w, need, room, now, window_s)
        if fresh_until > now:  # the ratio is forgotten then, and a call can tell anew
            wait = min(wait, fresh_until - now)
        return Decision(state, wait_s=max(MIN_WAIT_S, wait))

    def _wait(
        self, w: _Window, need: RateCounts, limits: RateCounts, now: float, window_s: float
    ) -> float:
        """Until the oldest entries whose leaving makes room for `need` have left the window."""
        wait = 0.0
        over = (w.used + need).values()
        for k, (total, limit) in enumerate(zip(over, limits.values(), strict=True)):
            if not limit or total <= limit:
                continue
            excess, freed = total - limit, 0
            for stamp, name in w.entries:
                freed += counts_of(name).values()[k]
                if freed >= excess:
                    wait = max(wait, stamp + window_s - now)
                    break
            else:
                wait = max(wait, window_s)
        return wait

    async def settle(
        self, grant: Grant, settlement: Settlement, *, limits: RateCounts, window_s: float
    ) -> BudgetState:
        """See BudgetStore.settle."""
        window_s = span(window_s)
        now = self._clock()
        w = self._windows.setdefault(grant.scope, _Window())
        w.prune(now - window_s)
        w.replace(grant.member, member(grant.grant_id, settlement.counted))
        learned = settlement.learned()
        if any(learned.values()):
            w.learned_at = now
        w.learned = RateCounts.of(
            [new or old for new, old in zip(learned.values(), w.learned.values(), strict=True)]
        )
        # Against the whole log: everything granted up to now, margins too (Settlement.ratios).
        if (ratios := settlement.ratios(grant.seen, w.used)) is not None:
            fresh = w.ratios_at + RATIO_WINDOWS * window_s > now
            w.ratios = blend(w.ratios if fresh else [0.0] * 4, ratios)
            w.ratios_at = now
        if (block := settlement.block_s()) > 0:
            w.blocked_until = max(w.blocked_until, now + block)
        return BudgetState(w.used, w.in_force(limits, now, window_s))

    async def close(self) -> None:
        """Nothing to release."""
