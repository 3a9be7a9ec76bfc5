"""The diagnostics runner behind `scripts/diagnose`: plan, dry-run and execute a CJ batch.

`execute` scrapes the server's `/metrics` before and after the run, so the bundle figures it
reports are the server's own, scoped to this run (assuming no other traffic meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cj_client.assessment import Assessment
from cj_client.backoff import Backoff, is_retryable
from cj_client.batching import (
    BatchJobWatch,
    BatchTags,
    CjSettings,
    request_metadata,
    resolve_batching_mode,
)
from cj_client.client import LpsClient
from cj_client.errors import LpsClientError
from cj_client.models import ComparisonOutcome, ComparisonSubmission, EssayInput, QueueStatsView
from cj_client.pairing import Pair, PairPlanner
from cj_client.request_ids import comparison_correlation_id, comparison_request_id
from cj_client.run_options import AssessmentOptions

BUNDLE_CALLS = "llm_provider_serial_bundle_calls_total"
BUNDLE_ITEMS = "llm_provider_serial_bundle_items_per_call"
BATCH_JOBS_ENDED = "llm_provider_batch_jobs_ended_total"
BATCH_RESULT = "llm_provider_batch_result_seconds"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def plan(
    essays: Sequence[EssayInput], options: AssessmentOptions, settings: CjSettings
) -> dict[str, Any]:
    """What a run would do, without side effects."""
    override = options.batch.llm_batching_mode_override
    mode = resolve_batching_mode(settings, options.batch, provider=options.provider)
    budget = options.budget_for(len(essays))
    first_wave = PairPlanner([e.id for e in essays], seed=options.seed).next_wave(scores=None)
    return {
        "essays": len(essays),
        "budget": budget,
        "wave_size": len(first_wave),
        "waves_at_most": -(-budget // max(1, len(first_wave))),
        "effective_batching_mode": mode.value,
        "batching_mode_override": override.value if override else None,
        "setting_batching_mode": settings.llm_batching_mode.value,
        "provider": options.provider,
        "model": options.model or "(provider default)",
        "first_wave_pairs": [f"{p.essay_a} vs {p.essay_b}" for p in first_wave],
    }


def dry_run(
    essays: Sequence[EssayInput], options: AssessmentOptions, settings: CjSettings, out: Path
) -> dict[str, Any]:
    """Build the requests of a run's waves (as if every comparison succeeded) and write them to
    `out` as JSONL; nothing is sent."""
    mode = resolve_batching_mode(settings, options.batch, provider=options.provider)
    batch_id = options.cj_batch_id or "dry-run"
    tags = BatchTags(batch_id, options.bos_batch_id or batch_id, options.cj_source, mode)
    planner = PairPlanner([e.id for e in essays], seed=options.seed)
    budget = options.budget_for(len(essays))
    lines: list[dict[str, Any]] = []
    wave_number = 0
    while len(lines) < budget:
        wave = planner.next_wave(scores=None, max_pairs=budget - len(lines))
        if not wave:
            break
        wave_number += 1
        for pair in wave:
            planner.record(pair)
            metadata = request_metadata(
                tags,
                essay_a_id=pair.essay_a,
                essay_b_id=pair.essay_b,
                iteration=wave_number,
                wave_size=len(wave),
                retry=False,
            )
            lines.append(
                {
                    "request_id": dry_run_request_id(batch_id, len(lines), pair, options, essays),
                    "essay_a": pair.essay_a,
                    "essay_b": pair.essay_b,
                    "provider": options.provider,
                    "model": options.model,
                    "metadata": metadata,
                }
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return {"requests_written": len(lines), "waves": wave_number, "file": str(out)}


class MetricsUnavailableError(Exception):
    """The server's /metrics cannot be found or read; the message names the URL."""


async def await_server(client: LpsClient, *, timeout: float) -> QueueStatsView:
    """The server's queue statistics, once it answers: a server still starting (UNAVAILABLE) is
    asked again with backoff for up to `timeout` seconds.

    Raises:
        LpsClientError: the server refused, or did not answer in time (the last error).
    """
    backoff = Backoff()
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            return await client.queue_stats()
        except LpsClientError as exc:
            wait = backoff.delay(attempt)
            if not is_retryable(exc.code) or time.monotonic() + wait > deadline:
                raise
        await asyncio.sleep(wait)
        attempt += 1


def metrics_url_of(client: LpsClient, stats: QueueStatsView) -> str:
    """The /metrics URL of the server `client` talks to, from the port it reports (`stats`).

    Raises:
        MetricsUnavailableError: the server reports no metrics port.
    """
    if not stats.metrics_port:
        raise MetricsUnavailableError(
            f"the server at {client.target} reports no /metrics port (metrics off, or a release "
            "before GetQueueStats.metrics_port); pass --metrics-url"
        )
    host = client.target.rsplit(":", 1)[0] or "127.0.0.1"
    return f"http://{host}:{stats.metrics_port}/metrics"


def dry_run_request_id(
    batch_id: str, number: int, pair: Pair, options: AssessmentOptions, essays: Sequence[EssayInput]
) -> str:
    """The request id a run would give comparison `number` (`pair`) of the batch."""
    by_id = {e.id: e for e in essays}
    sub = ComparisonSubmission(
        essay_a=by_id[pair.essay_a],
        essay_b=by_id[pair.essay_b],
        instructions=options.instructions,
        provider=options.provider,
        model=options.model,
    )
    return comparison_request_id(batch_id, number, sub)


def scrape(metrics_url: str) -> Samples:
    """Every sample the server exposes, keyed by (name, sorted labels).

    Raises:
        MetricsUnavailableError: the URL cannot be read or does not hold Prometheus metrics.
    """
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise MetricsUnavailableError(f"cannot read metrics at {metrics_url}: {reason}") from None
    samples: Samples = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    except ValueError as exc:
        raise MetricsUnavailableError(f"{metrics_url} holds no Prometheus metrics: {exc}") from None
    return samples


def _delta(before: Samples, after: Samples, name: str) -> Samples:
    return {
        key: value - before.get(key, 0.0)
        for key, value in after.items()
        if key[0] == name and value - before.get(key, 0.0) != 0
    }


def bundle_figures(before: Samples, after: Samples) -> dict[str, Any]:
    """Serial-bundle calls, items and the items-per-call histogram recorded between scrapes."""
    calls = sum(_delta(before, after, BUNDLE_CALLS).values())
    items = sum(_delta(before, after, f"{BUNDLE_ITEMS}_sum").values())
    histogram: dict[str, float] = {}
    for (_, labels), value in _delta(before, after, f"{BUNDLE_ITEMS}_bucket").items():
        bound = dict(labels)["le"]
        histogram[bound] = histogram.get(bound, 0.0) + value
    return {
        "bundle_calls": int(calls),
        "bundle_items": int(items),
        "items_per_call_histogram": dict(sorted(histogram.items(), key=lambda kv: float(kv[0]))),
    }


async def execute(
    essays: Sequence[EssayInput],
    options: AssessmentOptions,
    settings: CjSettings,
    *,
    client: LpsClient,
    metrics_url: str,
) -> dict[str, Any]:
    """Run a CJ batch against LPS and summarise it with the server's metrics for the run."""
    registry = CollectorRegistry()
    stats = await client.queue_stats()
    before = scrape(metrics_url)
    assessment = Assessment(
        essays, client=client, options=options, settings=settings, registry=registry
    )
    report = await assessment.run()
    after = scrape(metrics_url)
    outcomes = report.outcomes
    ids = [e.id for e in essays]
    sent = {comparison_correlation_id(report.cj_batch_id, a, b) for a in ids for b in ids if a != b}
    override = report.batching_mode_override
    cj_counters = {
        f"{s.name}{{batching_mode={s.labels['batching_mode']}}}": s.value
        for family in registry.collect()
        for s in family.samples
        if s.name in ("cj_llm_requests_total", "cj_llm_batches_started_total")
    }
    return {
        "cj_batch_id": report.cj_batch_id,
        "effective_batching_mode": report.effective_mode.value,
        "batching_mode_override": override.value if override else None,
        "queue_processing_mode": stats.processing_mode,
        "submitted": report.requested,
        "completed": sum(o.status == "completed" for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        "expired": sum(o.status == "expired" for o in outcomes),
        **bundle_figures(before, after),
        "batch_jobs": batch_jobs(outcomes, assessment.batch_jobs),
        **batch_job_figures(before, after),
        "cj_counters": cj_counters,
        "tokens": report.tokens,
        "cost_usd": round(report.cost_usd, 6),
        "ssr": round(report.scores.ssr, 4),
        "correlation_ids_matched": all(o.correlation_id in sent for o in outcomes),
        "trace_ids_present": bool(outcomes) and all(o.trace_id for o in outcomes),
        "elapsed_seconds": round(report.elapsed_s, 3),
    }


def batch_jobs(
    outcomes: Sequence[ComparisonOutcome], watch: BatchJobWatch | None
) -> list[dict[str, Any]]:
    """The run's provider batch jobs: from its results (a batch result's bundle id is
    `<job id>-<line>`) and what the run saw of each while it waited."""
    jobs: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        if outcome.processing_mode != "batch_api" or "-" not in outcome.bundle_id:
            continue
        job_id = outcome.bundle_id.rpartition("-")[0]
        job = jobs.setdefault(job_id, {"job_id": job_id, "requests": 0, "lines": set()})
        job["requests"] += 1
        job["lines"].add(outcome.bundle_id)
        job[outcome.status] = job.get(outcome.status, 0) + 1
    seen = watch.jobs if watch is not None else {}
    for job_id, job in jobs.items():
        job["lines"] = len(job["lines"])
        if (view := seen.get(job_id)) is not None:
            job["provider_batch_id"] = view.provider_batch_id
            job["last_seen_state"] = view.state
            job["last_seen_provider_state"] = view.provider_state
    return list(jobs.values())


def batch_job_figures(before: Samples, after: Samples) -> dict[str, Any]:
    """The server's batch-job figures recorded between the scrapes: jobs ended by outcome, and
    the mean time from submission to results."""
    ended: dict[str, float] = {}
    for (_, labels), value in _delta(before, after, BATCH_JOBS_ENDED).items():
        outcome = dict(labels)["outcome"]
        ended[outcome] = ended.get(outcome, 0.0) + value
    total = sum(_delta(before, after, f"{BATCH_RESULT}_sum").values())
    count = sum(_delta(before, after, f"{BATCH_RESULT}_count").values())
    return {
        "batch_jobs_ended": {k: int(v) for k, v in sorted(ended.items())},
        "batch_result_seconds_mean": round(total / count, 3) if count else None,
    }


def render(summary: dict[str, Any]) -> str:
    """The summary as a readable two-column table."""
    width = max(len(k) for k in summary)
    lines = []
    for key, value in summary.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)
