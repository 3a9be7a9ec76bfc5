"""Batching-mode resolution and tagging, CJ metrics, and `cj assess` end to end against real LPS."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from scipy.stats import spearmanr

from cj_client import LpsClient
from cj_client.assessment import Assessment
from cj_client.batching import (
    BatchConfig,
    BatchTags,
    CjSettings,
    LLMBatchingMode,
    request_metadata,
    resolve_batching_mode,
)
from cj_client.cli import main as cj_main
from cj_client.outputs import load_essays
from cj_client.run_options import AssessmentOptions
from lps_server.app import LpsApp
from lps_server.core.domain import ProcessingMode
from lps_server.providers.mock import quality
from tests.helpers import metric

ESSAYS = Path(__file__).resolve().parent.parent / "examples" / "essays"
PER = LLMBatchingMode.PER_REQUEST
SERIAL = LLMBatchingMode.SERIAL_BUNDLE
BATCH_API = LLMBatchingMode.PROVIDER_BATCH_API


@pytest.mark.parametrize(
    ("setting", "override", "allowed", "expected"),
    [
        (PER, None, set(), PER),
        (SERIAL, None, set(), SERIAL),
        (PER, SERIAL, set(), SERIAL),
        (SERIAL, PER, set(), PER),
        (PER, BATCH_API, {"openai"}, PER),  # mock not allowed: falls back to the setting
        (BATCH_API, None, set(), SERIAL),  # setting unusable too: serial_bundle
        (PER, BATCH_API, {"mock"}, BATCH_API),
    ],
)
def test_effective_mode(
    setting: LLMBatchingMode,
    override: LLMBatchingMode | None,
    allowed: set[str],
    expected: LLMBatchingMode,
) -> None:
    settings = CjSettings(llm_batching_mode=setting, batch_api_allowed_providers=frozenset(allowed))
    config = BatchConfig(llm_batching_mode_override=override)
    assert resolve_batching_mode(settings, config, provider="mock") == expected


def test_settings_from_env() -> None:
    settings = CjSettings.from_env(
        {"CJ_LLM_BATCHING_MODE": "serial_bundle", "CJ_LLM_BATCH_API_ALLOWED_PROVIDERS": "a, b"}
    )
    assert settings == CjSettings(SERIAL, frozenset({"a", "b"}))
    with pytest.raises(ValueError, match="CJ_LLM_BATCHING_MODE='bulk'"):
        CjSettings.from_env({"CJ_LLM_BATCHING_MODE": "bulk"})


def test_request_metadata_carries_every_key() -> None:
    tags = BatchTags("cj-1", "bos-1", "cj_assess", SERIAL)
    meta = request_metadata(
        tags, essay_a_id="x", essay_b_id="y", iteration=3, wave_size=100, retry=True
    )
    assert meta == {
        "essay_a_id": "x",
        "essay_b_id": "y",
        "bos_batch_id": "bos-1",
        "cj_batch_id": "cj-1",
        "cj_source": "cj_assess",
        "cj_request_type": "cj_retry",
        "comparison_iteration": "3",
        "cj_llm_batching_mode": "serial_bundle",
        "preferred_bundle_size": "64",
    }


def truth_correlation(ranking: list[dict[str, object]]) -> float:
    texts = {e.id: e.text for e in load_essays(ESSAYS)}
    scores = [float(row["score"]) for row in ranking]  # type: ignore[arg-type]
    truth = [quality(texts[str(row["id"])]) for row in ranking]
    return float(spearmanr(scores, truth).statistic)


@pytest.mark.parametrize(
    ("mode", "processing"),
    [(PER, ProcessingMode.PER_REQUEST), (SERIAL, ProcessingMode.SERIAL_BUNDLE)],
)
async def test_assessment_ranks_like_the_mock_truth_and_tags_every_request(
    start_lps: Callable[..., Awaitable[LpsApp]],
    mode: LLMBatchingMode,
    processing: ProcessingMode,
) -> None:
    app = await start_lps(queue_processing_mode=processing)
    registry = CollectorRegistry()
    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client:
        assessment = Assessment(
            load_essays(ESSAYS),
            client=client,
            options=AssessmentOptions(batch=BatchConfig(llm_batching_mode_override=mode)),
            registry=registry,
        )
        report = await assessment.run()
    assert report.effective_mode == mode
    assert report.requested == report.completed == 80
    rows = [{"id": e.essay_id, "score": e.score} for e in report.scores.essays]
    assert truth_correlation(rows) >= 0.9
    assert 0.5 < report.scores.ssr <= 1.0
    for outcome in report.outcomes:
        assert outcome.metadata["cj_llm_batching_mode"] == mode.value
        assert outcome.metadata["cj_batch_id"] == report.cj_batch_id
        assert outcome.metadata["queue_processing_mode"] == processing.value
        assert outcome.metadata["cj_request_type"] == "cj_comparison"
    if mode == SERIAL:
        assert report.provider_calls == report.waves  # one bundle per wave of 8
        assert {o.bundle_size for o in report.outcomes} == {8}
    else:
        assert report.provider_calls == 80
    assert metric(registry, "cj_llm_requests_total", batching_mode=mode.value) == 80
    assert metric(registry, "cj_llm_batches_started_total", batching_mode=mode.value) == 1


async def test_failed_comparisons_are_retried_and_a_retry_is_not_a_new_batch(
    start_lps: Callable[..., Awaitable[LpsApp]],
) -> None:
    app = await start_lps(mock_error_rate=0.3, queue_max_retries=0, mock_seed=7)
    registry = CollectorRegistry()
    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}") as client:
        report = await Assessment(
            load_essays(ESSAYS),
            client=client,
            options=AssessmentOptions(budget=60, cj_batch_id="batch-r", max_failed_share=1.0),
            registry=registry,
        ).run()
    retries = [o for o in report.outcomes if o.metadata["cj_request_type"] == "cj_retry"]
    assert report.failed > 0, "the error rate must cause failures"
    assert retries, "and failed comparisons must be retried"
    assert report.requested == 60
    assert metric(registry, "cj_llm_requests_total", batching_mode="per_request") == 60
    assert metric(registry, "cj_llm_batches_started_total", batching_mode="per_request") == 1


async def test_cj_assess_cli_writes_outputs(lps: LpsApp, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = await _run_cli(
        [
            "assess",
            str(ESSAYS),
            "--out",
            str(out),
            "--target",
            f"127.0.0.1:{lps.grpc_port}",
            "--budget",
            "48",
            "--plot",
            "--quiet",
        ]
    )
    assert code == 0
    ranking = json.loads((out / "ranking.json").read_text())
    assert [r["rank"] for r in ranking] == list(range(1, 17))
    fields = ["id", "rank", "score", "se", "comparisons", "infit", "outfit", "flags"]
    assert list(ranking[0]) == fields
    csv_header = (out / "ranking.csv").read_text().splitlines()[0]
    assert csv_header == ",".join(fields)
    assert all(r["se"] > 0 and r["infit"] > 0 for r in ranking)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["comparisons_requested"] == 48
    assert 0.0 <= summary["split_half_reliability"] <= 1.0
    assert summary["position_bias_se"] > 0
    assert summary["effective_batching_mode"] == "per_request"
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"


async def _run_cli(argv: list[str]) -> int:
    import asyncio

    # The CLI runs its own event loop: run it in a worker thread beside the test's server.
    return await asyncio.to_thread(cj_main, argv)


def test_load_essays_from_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text('{"id": "x", "text": "one"}\n\n{"id": "y", "text": "two"}\n')
    assert [e.id for e in load_essays(path)] == ["x", "y"]
    path.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=re.escape("e.jsonl:1: expected {id, text}")):
        load_essays(path)
