"""`cj assess`: rank a directory or JSONL file of essays, against LPS or an embedded one."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from cj_client.assessment import Assessment, AssessmentOptions, new_cj_batch_id
from cj_client.batching import BatchConfig, CjSettings, LLMBatchingMode
from cj_client.cli.common import Handler, add_connection_flags, run
from cj_client.cli.metrics_export import MetricsExport, MetricsExportError, add_metrics_flags
from cj_client.cli.tracing import TracingConfigError, tracing_from_env
from cj_client.client import LpsClient
from cj_client.metrics import CjMetrics
from cj_client.models import PROVIDER_NAMES
from cj_client.outputs import load_essays, ranking_rows, summary, write_outputs


def register(commands: Any) -> Handler:
    """Add the `assess` subcommand."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "assess", help="rank essays by comparative judgement"
    )
    parser.add_argument("path", type=Path, help="directory of .txt essays or a JSONL file")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--mode",
        choices=[m.value for m in LLMBatchingMode],
        help="batching mode override for this batch (default: CJ_LLM_BATCHING_MODE)",
    )
    parser.add_argument("--budget", type=int, help="most comparisons (default 5 per essay)")
    parser.add_argument("--provider", default="mock", choices=PROVIDER_NAMES)
    parser.add_argument("--model", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-id", default="", help="cj_batch_id (default: a new one)")
    parser.add_argument("--plot", action="store_true", help="also write scores.png")
    add_metrics_flags(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--show-results", action="store_true", help="print every comparison")
    add_connection_flags(parser, default_target=None)
    return lambda args: run(_assess(args))


async def _assess(args: argparse.Namespace) -> int:
    settings = CjSettings.from_env()
    override = LLMBatchingMode(args.mode) if args.mode else None
    essays = load_essays(args.path)
    # Metrics and tracing first: a flag that cannot be honoured stops the run before any work.
    registry = CollectorRegistry()
    metrics = CjMetrics(registry)  # before the start push, which carries its zeros
    cj_batch_id = args.batch_id or new_cj_batch_id()
    try:
        tracing = tracing_from_env()
        export = await MetricsExport.start(args, registry=registry, cj_batch_id=cj_batch_id)
    except (TracingConfigError, MetricsExportError) as exc:
        print(f"cj: {exc}", file=sys.stderr)
        return 2
    options = AssessmentOptions(
        budget=args.budget,
        batch=BatchConfig(llm_batching_mode_override=override),
        provider=args.provider,
        model=args.model,
        seed=args.seed,
        cj_batch_id=cj_batch_id,
    )
    async with AsyncExitStack() as stack:
        stack.push_async_callback(export.close)
        if tracing is not None:
            stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
        target = args.target
        if not target:
            mode = override or settings.llm_batching_mode
            target = await _embedded_lps(stack, mode, traced=tracing is not None)
        client = await stack.enter_async_context(
            LpsClient(
                target=target,
                token=args.token,
                tls=args.tls,
                tls_ca=args.tls_ca,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
            )
        )
        progress = None if args.quiet else _ProgressBar()
        assessment = Assessment(
            essays,
            client=client,
            options=options,
            settings=settings,
            metrics=metrics,
            progress=progress,
            tracer_provider=tracing,
            on_wave=export.wave_done,
        )
        report = await assessment.run()
    if progress is not None:
        progress.finish()
    if args.show_results:
        for outcome in report.outcomes:
            meta = outcome.metadata
            verdict = outcome.winner or f"{outcome.status}: {outcome.error_message}"
            print(
                f"  {meta.get('essay_a_id', '?'):>10} vs {meta.get('essay_b_id', '?'):<10} "
                f"-> {verdict:<8} confidence {outcome.confidence}  "
                f"bundle {outcome.bundle_index + 1}/{outcome.bundle_size}"
            )
    write_outputs(report, args.out, plot=args.plot)
    facts = summary(report)
    print(f"ranked {len(essays)} essays -> {args.out}/ranking.csv (best first):")
    for row in ranking_rows(report)[:5]:
        print(f"  {row['rank']:>2}. {row['id']:<12} score {row['score']:+.2f} ± {row['se']:.2f}")
    print("summary:")
    for key in (
        "effective_batching_mode",
        "comparisons_requested",
        "comparisons_completed",
        "provider_calls",
        "tokens",
        "ssr",
        "stop_reason",
        "elapsed_seconds",
    ):
        print(f"  {key:<24} {facts[key]}")
    return 0


async def _embedded_lps(stack: AsyncExitStack, mode: LLMBatchingMode, traced: bool) -> str:
    """Start an in-process LPS for this run; serial_bundle runs get a bundling server. A traced
    run's LPS exports its spans as service `lps`, joining the run's trace."""
    from lps_server.app import LpsApp
    from lps_server.core.config import Settings
    from lps_server.core.domain import ProcessingMode

    processing = (
        ProcessingMode.SERIAL_BUNDLE
        if mode == LLMBatchingMode.SERIAL_BUNDLE
        else ProcessingMode.PER_REQUEST
    )
    env = {k: v for k, v in os.environ.items() if k.startswith("LPS_")}
    settings = Settings.from_env(
        env, grpc_host="127.0.0.1", grpc_port=0, queue_processing_mode=processing
    )
    tracing = tracing_from_env(service_name="lps") if traced else None
    if tracing is not None:
        stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
    app = LpsApp(settings, tracer_provider=tracing)
    await app.start(serve_metrics=False)
    stack.push_async_callback(app.stop)
    return f"127.0.0.1:{app.grpc_port}"


class _ProgressBar:
    """A one-line progress bar on stderr."""

    WIDTH = 30

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH * min(done, total) // max(total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r[{bar}] {done}/{total} comparisons")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")
