"""An adversary's tests of the CJ client: what a new user or a careful operator does to `cj` that
the other `test_cj_*` modules do not try. Each xfail test names a bug it demonstrates; the others
guard a promise that had no test."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cj_client import (
    EssayInput,
)
from cj_client.cli import main as cj_main
from cj_client.journal import read_journal
from lps_server.app import LpsApp
from tests.cj_support import (
    ESSAYS,
    target,
)

Start = Callable[..., Awaitable[LpsApp]]


def essays(count: int, *, seed: int = 7) -> list[EssayInput]:
    """`count` essays of different richness (distinct words), so the mock judge tells them apart."""
    rng = random.Random(seed)
    return [
        EssayInput(f"e{i:03d}", " ".join(f"w{rng.randrange(10_000)}" for _ in range(5 + i % 40)))
        for i in range(count)
    ]


def _cj(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`cj` in this process (its own event loop): exit code, stdout, stderr."""
    code = cj_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _cj_beside(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`cj` in a worker thread, beside a server on this test's event loop."""
    code = await asyncio.to_thread(cj_main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- Resume: the journal after a crash --------------------------------------------------------


def _crash(out: Path, *, lost_results: int, cut_last: bool) -> None:
    """Make a finished run's journal look like that of a process killed near its end: no end
    record, the last `lost_results` results never written and, with `cut_last`, the result before
    them cut short mid-line (a write the crash interrupted)."""
    path = out / "journal.jsonl"
    lines = [
        line for line in path.read_text().splitlines(keepends=True) if '"kind": "end"' not in line
    ]
    assert all('"kind": "result"' in line for line in lines[-lost_results - 1 :])
    lines = lines[: len(lines) - lost_results]
    if cut_last:
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    path.write_text("".join(lines))


async def test_a_resumed_run_after_a_line_cut_short_leaves_a_readable_journal(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["assess", str(ESSAYS), "--out", str(out), "--target", target(lps), "--quiet"]
    code, _, err = await _cj_beside(capsys, *argv, "--budget", "24")
    assert code == 0, err
    _crash(out, lost_results=2, cut_last=True)
    code, _, err = await _cj_beside(capsys, *argv[:1], "--resume", *argv[2:])
    assert code == 0, err
    # Appended after the cut line, the first new record was glued to it: "not a journal line".
    contents = read_journal(out)
    assert contents.finished
    assert len(contents.results) == 24
