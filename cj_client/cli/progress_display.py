"""Showing a run's progress: a live bar on a terminal, plain periodic lines in a pipe or file."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from cj_client.progress import RunProgress

PLAIN_INTERVAL_S = 5.0


class ProgressDisplay(Protocol):
    """Receives a snapshot after every result and wave; `close` ends the display."""

    def __call__(self, snapshot: RunProgress) -> None: ...

    def close(self) -> None: ...


def make_display(*, quiet: bool, stream: IO[str] | None = None) -> ProgressDisplay:
    """No display (`quiet`), a rich bar when `stream` (stderr) is a terminal, else plain lines."""
    out = stream or sys.stderr
    if quiet:
        return QuietDisplay(out)
    console = Console(file=out)
    if console.is_terminal:
        return BarDisplay(console)
    return PlainDisplay(out)


def describe(p: RunProgress) -> str:
    """One line: wave, completed / failed / total, elapsed, ETA and SSR."""
    ssr = f"{p.ssr:.2f}" if p.ssr is not None else "-"
    eta = _clock(p.eta_s) if p.eta_s is not None else "-"
    return (
        f"wave {p.wave}: {p.completed}/{p.total} completed, {p.failed} failed, "
        f"elapsed {_clock(p.elapsed_s)}, eta {eta}, ssr {ssr}"
    )


class QuietDisplay:
    """Shows nothing but notices (a failure being retried is worth a line even when quiet)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, snapshot: RunProgress) -> None:
        if snapshot.notice:
            print(f"cj: {snapshot.notice}", file=self._stream, flush=True)

    def close(self) -> None:
        """Nothing to end."""


class PlainDisplay:
    """A line at most every `interval_s` seconds and for every notice; no carriage returns."""

    def __init__(
        self,
        stream: IO[str],
        *,
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interval = interval_s
        self._clock = clock
        self._last_line = -float("inf")
        self._latest: RunProgress | None = None
        self._shown: RunProgress | None = None

    def __call__(self, snapshot: RunProgress) -> None:
        self._latest = snapshot
        now = self._clock()
        if snapshot.notice:
            self._line(f"cj: {snapshot.notice}")
        elif now - self._last_line >= self._interval:
            self._show(snapshot)
            self._last_line = now

    def close(self) -> None:
        """Show the last state unless nothing moved since the line before."""
        if self._latest is not None and _counts(self._latest) != _counts(self._shown):
            self._show(self._latest)

    def _show(self, snapshot: RunProgress) -> None:
        self._shown = snapshot
        self._line(f"cj: {describe(snapshot)}")

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)


class BarDisplay:
    """A live rich bar per result: completed / failed / total, wave, elapsed, ETA, SSR."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("wave {task.fields[wave]}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TextColumn("[green]{task.fields[judged]} completed"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("elapsed {task.fields[elapsed]}"),
            TextColumn("eta {task.fields[eta]}"),
            TextColumn("ssr {task.fields[ssr]}"),
            console=console,
        )
        self._task: TaskID | None = None

    def __call__(self, snapshot: RunProgress) -> None:
        fields: dict[str, Any] = {
            "wave": snapshot.wave,
            "judged": snapshot.completed,
            "failed": snapshot.failed,
            "elapsed": _clock(snapshot.elapsed_s),
            "eta": _clock(snapshot.eta_s) if snapshot.eta_s is not None else "-",
            "ssr": f"{snapshot.ssr:.2f}" if snapshot.ssr is not None else "-",
        }
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("cj", total=snapshot.total, **fields)
        if snapshot.notice:
            self._progress.console.print(f"cj: {snapshot.notice}")
        self._progress.update(self._task, completed=snapshot.finished, **fields)

    def close(self) -> None:
        """Stop the live display, leaving its last state on screen."""
        if self._task is not None:
            self._progress.stop()


def _counts(p: RunProgress | None) -> tuple[int, int, int, float | None] | None:
    return None if p is None else (p.completed, p.failed, p.wave, p.ssr)


def _clock(seconds: float) -> str:
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
