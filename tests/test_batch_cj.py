"""CJ through provider batch APIs: a run ranks like the mock's truth with every comparison in a
batch job, says where its jobs stand while it waits, `cj assess --mode provider_batch_api` works
with an embedded server, and `scripts/diagnose execute` reports the run's jobs."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from cj_client import Assessment, AssessmentOptions, BatchConfig, LLMBatchingMode, LpsClient
from cj_client.batching import CjSettings
from cj_client.outputs import load_essays
from cj_client.progress import RunProgress
from lps_server.app import LpsApp
from tests.batch_rig import BATCH, QUICK
from tests.cj_support import run_cj
from tests.test_cj_assess import ESSAYS, truth_correlation
from tests.test_diagnose import _diagnose_here

BATCH_MODE = LLMBatchingMode.PROVIDER_BATCH_API
ALLOWED = CjSettings(batch_api_allowed_providers=frozenset({"mock"}))


async def test_a_batch_api_run_ranks_like_the_truth_and_says_where_its_jobs_stand(
    start_lps: Callable[..., Awaitable[LpsApp]],
) -> None:
    app = await start_lps(queue_processing_mode=BATCH, **{**QUICK, "mock_batch_latency_ms": 700.0})
    notices: list[str] = []

    def progress(snapshot: RunProgress) -> None:
        if snapshot.notice:
            notices.append(snapshot.notice)

    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client:
        assessment = Assessment(
            load_essays(ESSAYS),
            client=client,
            options=AssessmentOptions(
                budget=40, batch=BatchConfig(llm_batching_mode_override=BATCH_MODE)
            ),
            settings=ALLOWED,
            progress=progress,
        )
        report = await assessment.run()
    assert report.effective_mode == BATCH_MODE
    assert report.requested == report.completed == 40
    rows = [{"id": e.essay_id, "score": e.score} for e in report.scores.essays]
    assert truth_correlation(rows) >= 0.8
    assert {o.processing_mode for o in report.outcomes} == {"batch_api"}
    assert {o.metadata["cj_llm_batching_mode"] for o in report.outcomes} == {BATCH_MODE.value}
    jobs = {o.bundle_id.rpartition("-")[0] for o in report.outcomes}
    assert assessment.batch_jobs is not None
    assert set(assessment.batch_jobs.jobs) <= jobs
    assert assessment.batch_jobs.jobs, "the run saw its jobs while it waited"
    shown = [n for n in notices if n.startswith("batch job ")]
    assert shown
    assert any(": submitted, " in n and "provider batch mockbatch_" in n for n in shown), shown


@pytest.mark.slow
async def test_cj_assess_runs_through_the_batch_api_with_an_embedded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CJ_LLM_BATCH_API_ALLOWED_PROVIDERS", "mock")
    monkeypatch.setenv("LPS_MOCK_BATCH_LATENCY_MS", "1000")
    monkeypatch.setenv("LPS_BATCH_API_POLL_SECONDS", "0.05")
    # Its own process: the CLI's embedded server sets up logging for a process of its own.
    code, _, err = await run_cj(
        "assess",
        str(ESSAYS),
        "--out",
        str(tmp_path),
        "--mode",
        "provider_batch_api",
        "--budget",
        "24",
    )
    assert code == 0, err
    assert "batch job " in err, "the run said where its batch jobs stood"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["effective_batching_mode"] == "provider_batch_api"
    assert summary["comparisons_completed"] == 24


@pytest.mark.slow
async def test_a_batch_api_run_that_is_not_allowed_says_so_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CJ_LLM_BATCH_API_ALLOWED_PROVIDERS", raising=False)
    code, _, err = await run_cj(
        "assess",
        str(ESSAYS),
        "--out",
        str(tmp_path),
        "--mode",
        "provider_batch_api",
        "--budget",
        "8",
        "--quiet",
    )
    assert code == 0, err
    assert "provider_batch_api is not allowed for provider mock" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["effective_batching_mode"] == "per_request"


async def test_diagnose_execute_reports_the_runs_batch_jobs(
    start_lps: Callable[..., Awaitable[LpsApp]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CJ_LLM_BATCH_API_ALLOWED_PROVIDERS", "mock")
    app = await start_lps(
        queue_processing_mode=BATCH,
        serve_metrics=True,
        tracer_provider=TracerProvider(),
        **{**QUICK, "mock_batch_latency_ms": 700.0},
    )
    out = tmp_path / "execute.json"
    code, text, _ = await _diagnose_here(
        capsys,
        "execute",
        str(ESSAYS),
        "--mode",
        "provider_batch_api",
        "--budget",
        "24",
        "--target",
        f"127.0.0.1:{app.grpc_port}",
        "--json",
        str(out),
    )
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["queue_processing_mode"] == "batch_api"
    assert summary["completed"] == 24
    jobs = summary["batch_jobs"]
    assert sum(job["requests"] for job in jobs) == 24
    assert all(job["completed"] == job["requests"] for job in jobs)
    assert summary["batch_jobs_ended"] == {"completed": len(jobs)}
    assert summary["batch_result_seconds_mean"] >= 0.7
    assert any(job.get("provider_batch_id", "").startswith("mockbatch_") for job in jobs)
    assert summary["trace_ids_present"] is True
    assert "batch_jobs" in text
