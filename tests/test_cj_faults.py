"""`cj assess` under faults, with real processes: a server killed mid-run, Ctrl-C then --resume,
and a Redis restarted without persistence mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cj_client import Assessment, AssessmentOptions, CollectorLimits, LpsClient, load_essays
from tests.cj_support import ESSAYS, ROOT, CountingProvider, finish, serving, start_cj, target
from tests.redis_server import RedisProcess

pytestmark = pytest.mark.slow
EVENT_WAIT_S = 30.0


@pytest.fixture
async def lps_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`lps serve` as its own process, with a slow mock (200 ms a call) so that a run lasts; its
    log (stderr) is left for the test to read."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LPS_GRPC_HOST": "127.0.0.1",
        "LPS_MOCK_LATENCY_MS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lps_server.cli", "serve", "--port", "0", "--metrics-port", "0",
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    line = await _log_line(proc, "lps listening")
    match = re.search(r"lps listening grpc=127\.0\.0\.1:(\d+)", line)
    assert match, line
    yield proc, int(match.group(1))
    if proc.returncode is None:
        proc.kill()
    await asyncio.wait_for(proc.wait(), 10)


async def _log_line(proc: asyncio.subprocess.Process, text: str) -> str:
    """The next line of the server's log that holds `text` (with a deadline)."""
    assert proc.stderr is not None
    async with asyncio.timeout(EVENT_WAIT_S):
        while line := (await proc.stderr.readline()).decode():
            if text in line:
                return line
    raise AssertionError(f"the server's log ended before {text!r}")


async def test_a_server_killed_mid_run_ends_non_zero_naming_the_cause(
    lps_process: tuple[asyncio.subprocess.Process, int], tmp_path: Path
) -> None:
    server, port = lps_process
    out = tmp_path / "run"
    cj = await start_cj(
        "assess", str(ESSAYS), "--out", str(out), "--target", f"127.0.0.1:{port}",
        "--server-timeout", "1", "--quiet",
    )  # fmt: skip
    for _ in range(8):  # one log line per provider call (per_request: one per comparison)
        await _log_line(server, "stored results")
    server.kill()
    code, stdout, err = await finish(cj)
    assert code == 4, err
    assert "Traceback" not in err
    cause = [line for line in err.splitlines() if "server_lost" in line]
    assert len(cause) == 1
    assert f"lost the server at 127.0.0.1:{port}" in cause[0]
    assert "UNAVAILABLE" in cause[0]
    assert f"cj assess --resume --out {out}" in err
    # The outage was reported once, when it began (naming whatever the broken connection gave:
    # UNAVAILABLE, or grpc's INTERNAL for a write cut short), before the run gave up on it.
    assert len(re.findall(r"^cj: [A-Z_]+: .*; retrying for up to \d+ s$", err, re.M)) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["stop_reason"], summary["complete"]) == ("server_lost", False)
    assert summary["comparisons_completed"] >= 4  # the first calls' results had arrived
    assert "partial ranking" in stdout


async def test_ctrl_c_then_resume_pays_for_every_comparison_once(tmp_path: Path) -> None:
    provider = CountingProvider(latency_ms=100)
    out = tmp_path / "run"
    budget = 48
    async with serving(provider) as app:
        argv = ["assess", str(ESSAYS), "--out", str(out), "--target", target(app), "--quiet"]
        cj = await start_cj(*argv, "--budget", str(budget))
        async with asyncio.timeout(EVENT_WAIT_S):
            await provider.reached(12).wait()
        cj.send_signal(signal.SIGINT)
        code, _, err = await finish(cj)
        assert code == 130, err
        assert "interrupted (SIGINT)" in err
        interrupted = json.loads((out / "summary.json").read_text())
        assert interrupted["stop_reason"] == "interrupted"
        assert 0 < interrupted["comparisons_completed"] < budget
        assert (out / "ranking.csv").exists()

        code, _, err = await finish(await start_cj("assess", "--resume", "--out", str(out),
                                                   "--target", target(app), "--quiet"))  # fmt: skip
        assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["stop_reason"], summary["complete"]) == ("budget", True)
    assert summary["comparisons_requested"] == summary["comparisons_completed"] == budget
    # The provider was asked each comparison exactly once across both processes.
    results = [
        json.loads(line)["outcome"]["request_id"]
        for line in (out / "journal.jsonl").read_text().splitlines()
        if '"kind": "result"' in line
    ]
    assert len(results) == len(set(results)) == budget
    assert set(provider.asked) == set(results)
    assert set(provider.asked.values()) == {1}


@pytest.mark.redis
@pytest.mark.parametrize(
    ("stall_s", "recheck_s"),
    [(0.5, 30.0), (30.0, 0.3)],
    ids=["the client's lookups find them lost", "the server answers them request_lost"],
)
async def test_a_redis_restarted_without_persistence_mid_run_still_completes(
    stall_s: float, recheck_s: float
) -> None:
    redis = RedisProcess()
    redis.start()
    provider = CountingProvider(latency_ms=50)
    limits = CollectorLimits(server_timeout_s=30, stall_s=stall_s, lookup_timeout_s=2)
    try:
        async with (
            serving(
                provider,
                queue_backend="redis",
                redis_url=redis.url,
                stream_recheck_seconds=recheck_s,
            ) as app,
            LpsClient(target=target(app), timeout=5) as client,
        ):
            assessment = Assessment(
                load_essays(ESSAYS),
                client=client,
                options=AssessmentOptions(budget=64, max_failed_share=0.2),
                limits=limits,
            )
            run = asyncio.create_task(assessment.run())
            async with asyncio.timeout(EVENT_WAIT_S):
                await provider.reached(20).wait()
            redis.stop()
            redis.start()  # empty: every queued request and stored result is gone
            async with asyncio.timeout(EVENT_WAIT_S * 2):
                report = await run
    finally:
        redis.close()
    assert report.complete
    assert report.requested == 64
    assert report.completed + report.failed == 64
    # A request the server reports `request_lost` is sent again, not counted as failed.
    assert report.failed == 0, [o for o in report.outcomes if o.status != "completed"]
    # Lost requests were sent again under their ids: no request id was answered twice.
    ids = [o.request_id for o in report.outcomes]
    assert len(ids) == len(set(ids)) == 64
