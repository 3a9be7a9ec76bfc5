"""`cj assess` never lies and never pays twice, against a real LPS in this process: honest endings
(refusals named, too many failures, stops that need results), RetryInfo honoured, reruns of a
batch id, and the progress and file lines a person reads."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cj_client import (
    Assessment,
    AssessmentOptions,
    ComparisonSubmission,
    DeadlineExceededError,
    EssayInput,
    LpsClient,
    TooManyFailuresError,
    load_essays,
)
from cj_client.backoff import Backoff
from cj_client.cli import main as cj_main
from lps_server.app import LpsApp
from tests.cj_support import ESSAYS, CountingProvider, serving, target

Start = Callable[..., Awaitable[LpsApp]]
TOKEN = "tok-cj-runs"


async def _cj(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # The CLI runs its own event loop: a worker thread, beside this test's server.
    code = await asyncio.to_thread(cj_main, list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


async def test_a_missing_token_ends_the_run_at_once_naming_unauthenticated(
    start_lps: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_lps(auth_tokens=(TOKEN,))
    argv = ["assess", str(ESSAYS), "--out", str(tmp_path), "--target", target(app), "--quiet"]
    code, _, err = await _cj(capsys, *argv)
    assert code == 3
    assert "refused: UNAUTHENTICATED" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["stop_reason"], summary["complete"]) == ("refused", False)
    code, _, err = await _cj(capsys, *argv, "--resume", "--token", TOKEN)
    assert (code, err.count("\n")) == (0, 0), err


async def test_too_many_failed_comparisons_end_non_zero_with_the_outputs_written(
    start_lps: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = await start_lps(mock_error_rate=0.5, queue_max_retries=0, mock_seed=3)
    code, out, err = await _cj(
        capsys, "assess", str(ESSAYS), "--out", str(tmp_path), "--target", target(app), "--quiet"
    )
    assert code == 5
    assert "too_many_failures" in err
    assert "--max-failed-share 0.05" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stop_reason"] == "too_many_failures"
    assert summary["comparisons_failed"] > 0.05 * summary["comparisons_requested"]
    assert f"wrote {tmp_path / 'ranking.csv'}" in out
    # A verdict, not an accident: the journal says the run ended, so there is nothing to resume.
    assert "--resume" not in err


async def test_waves_without_results_never_make_a_scale_look_stable(start_lps: Start) -> None:
    app = await start_lps(mock_error_rate=1.0, queue_max_retries=0)
    async with LpsClient(target=target(app), timeout=10) as client:
        options = AssessmentOptions(budget=48, max_failed_share=1.0)
        assessment = Assessment(load_essays(ESSAYS), client=client, options=options)
        # Not "stable" (nothing was measured), nor a ranking at all, whatever the share allows.
        with pytest.raises(TooManyFailuresError, match="no comparison was judged: 48 of 48"):
            await assessment.run()
    report = assessment.report("too_many_failures")
    assert (report.requested, report.completed, report.failed) == (48, 0, 48)  # its whole budget


async def test_the_default_failed_share_stops_a_failing_run_early(start_lps: Start) -> None:
    app = await start_lps(mock_error_rate=1.0, queue_max_retries=0)
    async with LpsClient(target=target(app), timeout=10) as client:
        assessment = Assessment(
            load_essays(ESSAYS), client=client, options=AssessmentOptions(budget=100)
        )
        with pytest.raises(TooManyFailuresError, match="8 of 8 comparisons failed"):
            await assessment.run()
    # The failures of the first wave exceed 5% of the whole budget: it asks for no more.
    assert assessment.report("too_many_failures").requested == 8


class RecordingBackoff(Backoff):
    """Backoff that remembers what the server asked it to wait."""

    def __init__(self) -> None:
        super().__init__(initial_s=0.01, max_s=0.05)
        self.asked: list[float] = []

    def delay(self, attempt: int, retry_after: float = 0.0) -> float:
        self.asked.append(retry_after)
        return super().delay(attempt, retry_after)


async def test_a_full_queue_is_waited_out_as_retry_info_asks_and_nothing_is_paid_twice() -> None:
    provider = CountingProvider(latency_ms=50)
    backoff = RecordingBackoff()
    async with serving(provider, queue_max_size=4) as app, LpsClient(target=target(app)) as client:
        assessment = Assessment(
            load_essays(ESSAYS), client=client, options=AssessmentOptions(budget=8)
        )
        assessment._collector._backoff = backoff  # observe the waits only
        report = await assessment.run()
    # One wave of 8 into a queue of 4: four are refused RESOURCE_EXHAUSTED and sent again.
    assert (report.requested, report.completed) == (8, 8)
    assert 2.0 in backoff.asked  # RetryInfo of the full queue (RETRY_AFTER_FULL_S)
    assert Backoff().delay(0, 2.0) >= 2.0
    assert set(provider.asked.values()) == {1}
    assert len(provider.asked) == 8


def _copy_essays(to: Path) -> Path:
    shutil.copytree(ESSAYS, to)
    return to


async def test_a_rerun_of_a_batch_id_reuses_verdicts_and_asks_anew_for_changed_essays(
    tmp_path: Path,
) -> None:
    essays_dir = _copy_essays(tmp_path / "essays")
    provider = CountingProvider()
    options = AssessmentOptions(budget=48, cj_batch_id="term-1")
    async with serving(provider) as app, LpsClient(target=target(app), timeout=10) as client:
        first = await Assessment(load_essays(essays_dir), client=client, options=options).run()
        assert sum(provider.asked.values()) == 48
        # The same essays under the same batch id: the server answers every request from its store.
        again = await Assessment(load_essays(essays_dir), client=client, options=options).run()
        assert sum(provider.asked.values()) == 48
        assert [e.essay_id for e in again.scores.essays] == [
            e.essay_id for e in first.scores.essays
        ]
        # essay_13 is rewritten as the richest essay: every comparison it is in is asked anew.
        richest = " ".join(e.text for e in load_essays(essays_dir))
        (essays_dir / "essay_13.txt").write_text(richest)
        changed = await Assessment(load_essays(essays_dir), client=client, options=options).run()
    involving = [
        o.request_id
        for o in changed.outcomes
        if "essay_13" in (o.metadata["essay_a_id"], o.metadata["essay_b_id"])
    ]
    assert involving
    assert all(provider.asked[rid] == 1 for rid in involving)
    assert not set(involving) & {o.request_id for o in first.outcomes}
    assert changed.scores.essays[0].essay_id == "essay_13"
    assert first.scores.essays[0].essay_id != "essay_13"


async def test_progress_in_a_pipe_is_plain_lines_and_the_last_lines_name_every_file(
    lps: LpsApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "run"
    code, out, err = await _cj(
        capsys, "assess", str(ESSAYS), "--out", str(out_dir), "--target", target(lps), "--plot"
    )
    assert code == 0
    assert "\r" not in out + err
    progress = err.strip().splitlines()
    assert progress
    assert progress[-1].startswith("cj: wave ")
    assert "80/80 completed, 0 failed" in progress[-1]
    names = ["ranking.csv", "ranking.json", "summary.json", "scores.png", "journal.jsonl"]
    assert out.strip().splitlines()[-len(names) :] == [f"wrote {out_dir / n}" for n in names]
    for name in names:
        assert (out_dir / name).stat().st_size > 0


async def test_submit_and_wait_gives_up_at_its_deadline_naming_the_last_error() -> None:
    sub = ComparisonSubmission(EssayInput("a", "one text"), EssayInput("b", "another text"))
    async with LpsClient(target="127.0.0.1:1", timeout=1) as client:
        with pytest.raises(DeadlineExceededError, match=r"within 0\.5 s; last error UNAVAILABLE"):
            await client.submit_and_wait(sub, timeout=0.5)
