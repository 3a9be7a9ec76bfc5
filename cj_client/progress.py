"""Progress of a CJ run as it goes: counts per result, the wave, elapsed time, ETA and SSR."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cj_client.models import ComparisonOutcome


@dataclass(frozen=True, slots=True)
class RunProgress:
    """Where a run stands.

    Attributes:
        completed: comparisons with a judgement (resumed ones included).
        failed: comparisons that ended without one (each retry counts on its own).
        total: the comparison budget.
        wave: the number of the wave being collected.
        elapsed_s: seconds since this process started the run.
        eta_s: seconds until the budget is spent at the rate seen so far (None until known; a
            stable scale may stop the run sooner).
        ssr: the scale separation reliability of the latest fit, None before the first.
        notice: a line for the user (a failure being retried), else "".
    """

    completed: int
    failed: int
    total: int
    wave: int
    elapsed_s: float
    eta_s: float | None
    ssr: float | None
    notice: str = ""

    @property
    def finished(self) -> int:
        """Comparisons that ended, judged or not."""
        return self.completed + self.failed


ProgressSink = Callable[[RunProgress], None]


class ProgressTracker:
    """Counts a run's results and tells `sink` after each result, wave and notice.

    Args:
        total: the comparison budget.
        sink: where snapshots go.
        clock: a monotonic clock in seconds.
    """

    def __init__(
        self, total: int, sink: ProgressSink, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._total = total
        self._sink = sink
        self._clock = clock
        self._started = clock()
        self._completed = self._failed = self._here = 0
        self._wave = 0
        self._ssr: float | None = None

    def restored(self, outcome: ComparisonOutcome) -> None:
        """Count a result read back from the journal (it does not count towards the rate)."""
        self._count(outcome)

    def result(self, outcome: ComparisonOutcome) -> None:
        """Count a result that arrived now."""
        self._count(outcome)
        self._here += 1
        self._emit()

    def wave(self, number: int, *, ssr: float | None = None) -> None:
        """A wave began (`ssr` None) or was fitted."""
        self._wave = number
        if ssr is not None:
            self._ssr = ssr
        self._emit()

    def notice(self, message: str) -> None:
        """Pass a line to the user."""
        self._emit(message)

    def snapshot(self, notice: str = "") -> RunProgress:
        """Where the run stands now."""
        elapsed = self._clock() - self._started
        left = max(0, self._total - self._completed - self._failed)
        eta = left * elapsed / self._here if self._here and elapsed > 0 else None
        return RunProgress(
            completed=self._completed,
            failed=self._failed,
            total=self._total,
            wave=self._wave,
            elapsed_s=elapsed,
            eta_s=eta,
            ssr=self._ssr,
            notice=notice,
        )

    def _count(self, outcome: ComparisonOutcome) -> None:
        if outcome.status == "completed":
            self._completed += 1
        else:
            self._failed += 1

    def _emit(self, notice: str = "") -> None:
        self._sink(self.snapshot(notice))
