"""A circuit breaker per provider: fail fast while a provider is down instead of queueing timeouts.

Closed: calls go through. After `threshold` consecutive calls fail because the provider did not
answer (5xx, connection error, timeout) the circuit opens and calls fail at once, without HTTP,
for `cooldown_s`. Then it is half-open: one trial call goes through; its success closes the
circuit, its failure opens it for another cooldown. Calls that arrive while the trial is in flight
wait for its outcome (at most `trial_wait_s`) instead of failing: they go through once it closed
the circuit, and fail fast, with the new cooldown as their retry-after, once it opened it again.
Any HTTP answer that is not a server error (including 429 and other 4xx) proves the provider is
reachable and counts as a success here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from lps_server.core.domain import CircuitState, ErrorCode, ProviderName
from lps_server.providers.base import ProviderCallError

#: Call failures that mean "the provider did not answer"; only these count towards opening.
TRIP_CODES = frozenset({ErrorCode.PROVIDER_UNAVAILABLE, ErrorCode.TIMEOUT})


#: Called with the provider and its new state on every transition (e.g. to set a gauge).
CircuitListener = Callable[[ProviderName, CircuitState], None]


class CircuitBreaker:
    """The circuit of one provider; not thread-safe, meant for one event loop.

    Args:
        provider: whose calls this breaker guards (named in its errors).
        threshold: consecutive failed calls that open the circuit.
        cooldown_s: how long the circuit stays open before a trial call.
        clock: monotonic time source.
        on_state_change: called on every transition.
        trial_wait_s: how long a call waits for a trial in flight (the provider's call timeout
            bounds the trial; this bounds the wait should it not).
    """

    def __init__(
        self,
        provider: ProviderName,
        *,
        threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: CircuitListener | None = None,
        trial_wait_s: float = 60.0,
    ) -> None:
        self._provider = provider
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._listener = on_state_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_wait_s = trial_wait_s
        # Set while no trial call is in flight; calls that find one in flight wait for it.
        self._no_trial = asyncio.Event()
        self._no_trial.set()

    @property
    def state(self) -> CircuitState:
        """The current state; an open circuit whose cooldown has passed reads half-open."""
        if self._state is CircuitState.OPEN and self._clock() >= self._opened_at + self._cooldown_s:
            self._move(CircuitState.HALF_OPEN)
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failed calls since the last success."""
        return self._failures

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Admit one call and learn from how it ends.

        The guarded block signals failure by raising ProviderCallError; its code decides whether
        the failure counts (TRIP_CODES). Cancellation and other exceptions leave the count as is.
        While a half-open circuit's trial call is in flight, this waits for its outcome.

        Raises:
            ProviderCallError: PROVIDER_UNAVAILABLE at once when the circuit is open (with the
                rest of the cooldown as retry-after), or when a trial call outlasted
                `trial_wait_s`.
        """
        await self._wait_for_trial()
        state = self.state
        if state is CircuitState.OPEN:
            remaining = max(0.0, self._opened_at + self._cooldown_s - self._clock())
            raise ProviderCallError(
                ErrorCode.PROVIDER_UNAVAILABLE,
                f"circuit open for provider {self._provider.value} after {self._failures} "
                f"consecutive failures; retrying after {math.ceil(remaining)}s",
                retry_after=remaining,
            )
        probe = state is CircuitState.HALF_OPEN
        if probe:
            self._no_trial.clear()
        try:
            yield
        except ProviderCallError as exc:
            if exc.failure.code in TRIP_CODES:
                self._record_failure()
            else:
                self._record_success()
            raise
        else:
            self._record_success()
        finally:
            if probe:
                self._no_trial.set()

    async def _wait_for_trial(self) -> None:
        """Return once no trial call is in flight (at once when none is)."""
        deadline = time.monotonic() + self._trial_wait_s
        try:
            # Every waiter wakes when a trial ends; should it have ended without an outcome
            # (cancelled), the first to resume becomes the next trial and the others wait again.
            while not self._no_trial.is_set():
                await asyncio.wait_for(self._no_trial.wait(), deadline - time.monotonic())
        except TimeoutError:
            raise ProviderCallError(
                ErrorCode.PROVIDER_UNAVAILABLE,
                f"circuit half-open for provider {self._provider.value}: its trial call "
                f"outlasted {self._trial_wait_s:g}s",
                retry_after=self._cooldown_s,
            ) from None

    def _record_success(self) -> None:
        self._failures = 0
        self._move(CircuitState.CLOSED)

    def _record_failure(self) -> None:
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED and self._failures >= self._threshold
        ):
            self._opened_at = self._clock()
            self._move(CircuitState.OPEN)

    def _move(self, state: CircuitState) -> None:
        if state is self._state:
            return
        self._state = state
        if self._listener is not None:
            self._listener(self._provider, state)
