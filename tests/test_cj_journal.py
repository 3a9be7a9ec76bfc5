"""The run journal survives a process killed mid-line; the progress displays say what they must."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from cj_client import ComparisonOutcome, JournalError, RunProgress, read_journal
from cj_client.cli.progress_display import BarDisplay, PlainDisplay
from cj_client.journal import PlannedComparison, PlannedWave, RunJournal, journal_path


def _journal_with_one_result(directory: Path) -> None:
    journal = RunJournal.create(directory, {"cj_batch_id": "b", "options": {}})
    journal.wave(PlannedWave(1, (PlannedComparison("b:0:x:y:d", 0, "x", "y", retry=False),)))
    journal.result(ComparisonOutcome("b:0:x:y:d", "completed", winner="essay_a"))
    journal.close()


def test_a_line_cut_short_by_a_crash_is_ignored(tmp_path: Path) -> None:
    _journal_with_one_result(tmp_path)
    with journal_path(tmp_path).open("a") as handle:
        handle.write('{"kind": "result", "outcome": {"request_id": "b:1')  # killed mid-write
    contents = read_journal(tmp_path)
    assert list(contents.results) == ["b:0:x:y:d"]
    assert contents.results["b:0:x:y:d"].winner == "essay_a"
    assert [w.number for w in contents.waves] == [1]
    assert not contents.finished


def test_damage_inside_the_journal_is_named_with_its_line(tmp_path: Path) -> None:
    _journal_with_one_result(tmp_path)
    lines = journal_path(tmp_path).read_text().splitlines()
    lines[1] = "not json"
    journal_path(tmp_path).write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError, match=r"journal\.jsonl:2: not a journal line"):
        read_journal(tmp_path)
    journal_path(tmp_path).write_text('{"kind": "wave"}\n')
    with pytest.raises(JournalError, match="does not start with a run header"):
        read_journal(tmp_path)


SNAPSHOT = RunProgress(
    completed=30, failed=2, total=80, wave=4, elapsed_s=12.0, eta_s=18.0, ssr=0.71
)


def test_plain_progress_lines_are_periodic_and_never_carriage_returns() -> None:
    stream = io.StringIO()
    now = [0.0]
    display = PlainDisplay(stream, interval_s=5.0, clock=lambda: now[0])
    display(SNAPSHOT)
    now[0] = 1.0
    display(RunProgress(31, 2, 80, 4, 13.0, 17.0, 0.71))  # within the interval: not shown
    display(RunProgress(31, 2, 80, 4, 13.0, 17.0, 0.71, notice="UNAVAILABLE: retrying"))
    display.close()
    assert stream.getvalue().splitlines() == [
        "cj: wave 4: 30/80 completed, 2 failed, elapsed 0:12, eta 0:18, ssr 0.71",
        "cj: UNAVAILABLE: retrying",
        "cj: wave 4: 31/80 completed, 2 failed, elapsed 0:13, eta 0:17, ssr 0.71",
    ]
    assert "\r" not in stream.getvalue()


def test_the_terminal_bar_shows_completed_failed_total_wave_eta_and_ssr() -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=160, color_system=None)
    display = BarDisplay(console)
    display(SNAPSHOT)
    display.close()
    shown = stream.getvalue()
    for part in ("wave 4", "32/80", "30 completed", "2 failed", "eta 0:18", "ssr 0.71"):
        assert part in shown, part
