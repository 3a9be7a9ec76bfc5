"""The budget store: rolling-window rate budgets shared by every replica (Redis) or one (local).

A budget is a log of grants over the provider's limit period (the window, a minute for real
providers): each grant records what a call asks (requests, tokens), and a call is granted only
when the grants of the last window plus its own stay within every limit. That is the way
providers count ("per rolling minute"), so traffic the budget grants never exceeds a rolling
limit, nor a token bucket of the same limit (which admits at least as much).

A grant counts from the moment it is granted for one window and a margin (`span`): the provider
starts counting the call when it arrives, a little later, and the grant must not leave the
budget's window before the call leaves the provider's.

The store also listens to the provider (`settle`): once a call is answered its grant takes the
provider's own count of it (its usage, in place of the estimate); limits announced by the
rate-limit headers are learned (the budget in force is the tighter of the configured and the
announced one, and the announced one alone without configuration, for `RATIO_WINDOWS` windows
after the provider last announced one: a limit lowered for a while must not bind for ever); when
the provider reports more use than the window held when the call was granted (a count higher
than ours, other clients on the same key) the provider's count wins: the budget learns the ratio
of its count to ours and grants only the limit divided by it, until the provider tells anew or
`RATIO_WINDOWS` windows pass without news (a key that others fill would otherwise never be tried
again). The comparison is made so that calls still in flight do not read as a higher count
(`Settlement.ratios`). As a ratio the
correction converges for both causes: a count that is higher in proportion is matched exactly,
and with another client spending X of a limit L the budget settles at L - X (granting U of L/r,
r = (U + X) / U, has its fixed point there). A 429's Retry-After blocks the budget until then.
A budget of which nothing is known (none configured, no headers yet) grants everything; its
grants are logged all the same, so that the first headers find the log complete.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lps_server.core.rates import RATE_KINDS, RateCounts, RateLimitReading

# A grant outlasts the window by this much plus this share of it: the time a granted call takes
# to reach the provider (its prompt built, its lease confirmed, the request sent), generously.
SPAN_MARGIN_S = 0.1
SPAN_MARGIN_SHARE = 0.01
# The shortest wait a denial asks for, so that a dispatcher never spins.
MIN_WAIT_S = 0.005
# The ratio of the provider's count to ours is kept this many windows without news: what causes it
# (another client spending on, a different way of counting) outlasts the window.
RATIO_WINDOWS = 3
# A new ratio is averaged with the one before (headers are rounded and calls overlap), within
# these bounds: below 1 the difference is calls still on their way, never more room.
RATIO_WEIGHT = 0.5
RATIO_RANGE = (1.0, 8.0)
# Learned limits and the log outlive the last call by this much.
STATE_TTL_S = 86_400.0


class BudgetUnavailableError(Exception):
    """The budget store cannot be reached; the message names the cause."""


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A budget's window as the store saw it: what is used and the limits in force (0: none)."""

    used: RateCounts = field(default_factory=RateCounts)
    limits: RateCounts = field(default_factory=RateCounts)


@dataclass(frozen=True, slots=True)
class Grant:
    """A granted call: the entry in the log that holds what it asked for, and what the window
    held with it (`seen`), to compare with what the provider will say it held."""

    scope: str
    grant_id: str
    need: RateCounts
    seen: RateCounts = field(default_factory=RateCounts)

    @property
    def member(self) -> str:
        """The log entry's name, which carries its counts (`id|requests|tokens|input|output`)."""
        return member(self.grant_id, self.need)


@dataclass(frozen=True, slots=True)
class Decision:
    """The store's answer to a call that asks for budget.

    `grant` is set when granted; otherwise `wait_s` says how long until enough of the window
    has passed (or a block ends), and `never` names the kinds in which the call asks
    more than the limit itself: it can never be granted and must be made smaller.
    """

    state: BudgetState
    grant: Grant | None = None
    wait_s: float = 0.0
    never: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a call's answer tells a budget: the provider's count of the call and its headers.

    Attributes:
        counted: what the provider counted for the call (its usage; estimates where unknown).
        readings: the rate-limit headers of the call's responses, in order.
        rate_limited: a response was 429: its Retry-After (or the reset of an exhausted limit)
            blocks the budget.
        max_block_s: the longest a 429 may block it (LPS_RETRY_AFTER_MAX_SECONDS, which caps
            the retry too): a provider asking for a day does not stop the fleet for a day.
    """

    counted: RateCounts
    readings: Sequence[RateLimitReading] = field(default_factory=list)
    rate_limited: bool = False
    max_block_s: float = math.inf

    def learned(self) -> RateCounts:
        """The limits the latest headers announced (0 where none)."""
        values = [0, 0, 0, 0]
        for reading in self.readings:
            for i, limit in enumerate(reading.limits().values()):
                values[i] = limit or values[i]
        return RateCounts.of(values)

    def provider_used(self) -> list[int]:
        """Per kind what the provider counted as used at its latest answer (-1: unknown)."""
        values = [-1, -1, -1, -1]
        for reading in self.readings:
            used = reading.used().values()
            for i, kind in enumerate(RATE_KINDS):
                r = reading.kinds.get(kind)
                if r is not None and r.limit is not None and r.remaining is not None:
                    values[i] = used[i]
        return values

    def ratios(self, granted: RateCounts, now: RateCounts) -> list[float] | None:
        """Per kind the provider's count of its window as a ratio to ours (0 where unknown;
        None when the headers said nothing of the use): to `granted`, what the budget's window
        held with the call's grant, once the provider holds more than `now`, the whole log as the
        answer is settled (every grant up to now, margins too); else 1, it counts no more.

        A provider may count its window when it answers: it then holds every call that arrived
        while this one was under way, granted after it. Against the window at the grant alone,
        those calls read as a higher count (eight calls sent together at a run's start read as 8
        and paused a replica for most of a window); against the window at the answer alone, the
        calls granted but not arrived yet read as a lower one (a loaded fleet under-corrected and
        was refused). A count beyond everything granted up to now is more than calls in flight
        can explain, and the window at the grant then gives the conservative ratio."""
        theirs = self.provider_used()
        out, told = [], False
        for t, g, n in zip(theirs, granted.values(), now.values(), strict=True):
            if t < 0 or g <= 0:
                out.append(0.0)
                continue
            told = True
            out.append(t / g if t > max(g, n) else 1.0)
        return out if told else None

    def block_s(self) -> float:
        """How long the budget is closed after this answer: a 429's Retry-After, else the reset
        of the limit it exhausted; 0 when the call was not refused."""
        if not self.rate_limited:
            return 0.0
        for reading in reversed(self.readings):
            if reading.retry_after_s is not None:
                return min(reading.retry_after_s, self.max_block_s)
            if (reset := reading.exhausted_reset_s()) is not None:
                return min(reset, self.max_block_s)
        return 0.0


def blend(old: Sequence[float], new: Sequence[float]) -> list[float]:
    """The ratios after news: averaged with the previous ones, kept where the news says nothing,
    within RATIO_RANGE (1.0 where never known)."""
    low, high = RATIO_RANGE
    out = []
    for before, now in zip(old, new, strict=True):
        if now <= 0:
            out.append(before or low)
            continue
        value = now if not before else RATIO_WEIGHT * now + (1 - RATIO_WEIGHT) * before
        out.append(min(max(value, low), high))
    return out


def scaled(limits: RateCounts, ratios: Sequence[float]) -> RateCounts:
    """The limits divided by the provider's count ratios (at least 1 where limited, since 0
    means "no limit")."""
    return RateCounts.of(
        [
            max(1, int(lim / max(r, 1.0))) if lim else 0
            for lim, r in zip(limits.values(), ratios, strict=True)
        ]
    )


def margin(window_s: float) -> float:
    """How long a granted call may take to reach the provider: a grant counts this much longer
    than the provider's window."""
    return window_s * SPAN_MARGIN_SHARE + SPAN_MARGIN_S


def span(window_s: float) -> float:
    """How long a grant counts: the provider's window and a margin for the call to reach it."""
    return window_s + margin(window_s)


def member(grant_id: str, counts: RateCounts) -> str:
    """A log entry's name: the grant id and its counts, so the log alone can be summed."""
    return "|".join([grant_id, *(str(v) for v in counts.values())])


def counts_of(member_name: str) -> RateCounts:
    """The counts a log entry's name carries."""
    return RateCounts.of([int(v) for v in member_name.split("|")[1:5]])


class BudgetStore(Protocol):
    """Rolling-window rate budgets, each named by a scope (`<provider>:<model>`)."""

    async def acquire(
        self, scope: str, *, need: RateCounts, limits: RateCounts, window_s: float
    ) -> Decision:
        """Grant `need` now if the window has room under the tighter of `limits` (configured)
        and the limits learned from the provider; else say how long to wait.

        Raises:
            BudgetUnavailableError: the store cannot be reached.
        """
        ...

    async def settle(
        self, grant: Grant, settlement: Settlement, *, limits: RateCounts, window_s: float
    ) -> BudgetState:
        """Replace a grant's estimate by the provider's count, stamped now; learn and correct
        from its headers (see the module docstring).

        Raises:
            BudgetUnavailableError: the store cannot be reached.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
