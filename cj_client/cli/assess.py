"""`cj assess`: rank a directory or JSONL file of essays, against LPS or an embedded one."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import threading
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from cj_client.anchors import AnchorFileError, check_anchors, load_anchors
from cj_client.assessment import Assessment
from cj_client.batching import (
    BatchConfig,
    CjSettings,
    LLMBatchingMode,
    request_ttl_for,
    resolve_batching_mode,
)
from cj_client.cli import exit_codes
from cj_client.cli.assess_outputs import RunFiles, check_output_paths, report_and_exit
from cj_client.cli.common import (
    Handler,
    add_connection_flags,
    connect,
    out_directory,
    positive_int,
    run,
    say,
    seconds,
    share,
)
from cj_client.cli.embedded_lps import (
    embedded_settings,
    refuse_other_providers,
    start_embedded_lps,
)
from cj_client.cli.metrics_export import MetricsExport, MetricsExportError, add_metrics_flags
from cj_client.cli.progress_display import make_display
from cj_client.cli.tracing import TracingConfigError, tracing_from_env
from cj_client.collector import CollectorLimits
from cj_client.errors import AssessmentError, InputError, JournalError, OutputWriteError
from cj_client.journal import JournalContents, journal_path, read_journal
from cj_client.judges import Judge
from cj_client.metrics import CjMetrics
from cj_client.models import PROVIDER_NAMES
from cj_client.outputs import load_essays
from cj_client.request_ids import MAX_BATCH_ID_CHARS, MAX_REQUEST_ID_CHARS
from cj_client.run_options import (
    AssessmentOptions,
    AssessmentReport,
    journaled_options,
    journaled_settings,
    new_cj_batch_id,
)

# Flags that define a run: a resumed run keeps the ones it began with.
RUN_FLAGS = ("mode", "budget", "provider", "model", "seed", "batch_id", "judge", "anchors")
DEFAULT_MAX_FAILED_SHARE = AssessmentOptions().max_failed_share


def register(commands: Any) -> Handler:
    """Add the `assess` subcommand."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "assess",
        help="rank essays by comparative judgement",
        description="Rank essays by comparative judgement through LPS. Results are journaled in "
        "--out as they arrive; an interrupted or failed run continues with --resume.",
        epilog=exit_codes.SUMMARY,
    )
    parser.add_argument(
        "path",
        type=Path,
        nargs="?",
        help="directory of .txt essays (id = file name without .txt) or a JSONL file of "
        '{"id", "text"} lines; with --resume, the journaled run\'s path by default',
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output directory (created)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run journaled in --out, with its options; finished "
        "comparisons are not paid for again",
    )
    parser.add_argument(
        "--mode",
        choices=[m.value for m in LLMBatchingMode],
        help="batching mode override for this batch (default: CJ_LLM_BATCHING_MODE)",
    )
    parser.add_argument(
        "--budget", type=positive_int, help="most comparisons (default 5 per essay)"
    )
    parser.add_argument(
        "--provider", choices=PROVIDER_NAMES, help="LLM provider the server calls (default mock)"
    )
    parser.add_argument("--model", help="model (default: the provider's default)")
    parser.add_argument("--seed", type=int, help="seed of the pair planner (default 0)")
    parser.add_argument(
        "--batch-id",
        help="cj_batch_id (default: a new one); the same id with the same essays reuses the "
        "server's stored verdicts",
    )
    parser.add_argument(
        "--max-failed-share",
        type=share,
        metavar="SHARE",
        help="end with exit code 5 when more than this share of comparisons failed (default "
        f"{DEFAULT_MAX_FAILED_SHARE:g}; a resumed run keeps its own unless given)",
    )
    parser.add_argument(
        "--server-timeout",
        type=seconds,
        default=60.0,
        metavar="SECONDS",
        help="end with exit code 4 when the server answers nothing for this long; until then "
        "it is retried with backoff (default 60)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=seconds,
        default=20.0,
        metavar="SECONDS",
        help="look up (and resend lost) comparisons after this long without a result (default 20)",
    )
    parser.add_argument("--plot", action="store_true", help="also write scores.png")
    # Statistics: several judges, anchors (docs/cj.md).
    parser.add_argument(
        "--judge",
        action="append",
        type=_judge,
        metavar="PROVIDER[:MODEL]",
        help="a judge; repeat for several, who take the comparisons in turn (default: --provider)",
    )
    parser.add_argument(
        "--anchors", type=Path, metavar="FILE", help="CSV id,score: essays whose scores are fixed"
    )
    add_metrics_flags(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument(
        "--show-results", action="store_true", help="print every comparison at the end"
    )
    add_connection_flags(parser, default_target=None)
    return lambda args: run(_assess(args))


def _plan(args: argparse.Namespace) -> tuple[Path, AssessmentOptions, JournalContents | None]:
    """The essays' path, the run's options and (on --resume) the journal to continue.

    Raises:
        InputError: the flags, the output directory or its journal do not allow the run.
    """
    out = args.out
    if not args.resume:
        if args.path is None:
            raise InputError("give the essays' PATH (or --resume to continue a run in --out)")
        if args.batch_id is not None and len(args.batch_id) > MAX_BATCH_ID_CHARS:
            raise InputError(
                f"--batch-id: at most {MAX_BATCH_ID_CHARS} characters (request ids built on it "
                f"must fit LPS's {MAX_REQUEST_ID_CHARS}), got {len(args.batch_id)}"
            )
        out_directory(out)
        check_output_paths(out)
        _refuse_unfinished(out)
        try:
            options = AssessmentOptions(
                budget=args.budget,
                batch=BatchConfig(LLMBatchingMode(args.mode) if args.mode else None),
                provider=args.provider or "mock",
                model=args.model or "",
                seed=args.seed or 0,
                cj_batch_id=args.batch_id or "",
                max_failed_share=_given(args.max_failed_share, DEFAULT_MAX_FAILED_SHARE),
                judges=tuple(args.judge or ()),
                anchors=load_anchors(args.anchors) if args.anchors else {},
            )
        except ValueError as exc:  # AnchorFileError included: one line naming the file
            raise InputError(str(exc)) from None
        return args.path, options, None
    given = [f"--{name.replace('_', '-')}" for name in RUN_FLAGS if getattr(args, name) is not None]
    if given:
        raise InputError(f"{', '.join(given)}: a resumed run keeps the options it began with")
    try:
        contents = read_journal(out)
        options = journaled_options(contents)
    except JournalError as exc:
        raise InputError(str(exc)) from None
    if contents.finished:
        reason = contents.end.get("stop_reason") if contents.end else ""
        raise InputError(f"--out {out}: its run has finished ({reason}); nothing to resume")
    out_directory(out)  # its files are written there at the end
    check_output_paths(out)
    if args.max_failed_share is not None:
        options = dataclasses.replace(options, max_failed_share=args.max_failed_share)
    path = args.path or Path(str(contents.header.get("source", "")))
    return path, options, contents


def _refuse_unfinished(out: Path) -> None:
    if not journal_path(out).exists():
        return
    try:
        contents = read_journal(out)
    except JournalError:
        return  # not a journal we can continue: a new run replaces it
    if not contents.finished:
        batch = contents.header.get("cj_batch_id", "")
        raise InputError(
            f"--out {out}: holds an unfinished run (batch {batch}); continue it with --resume, "
            "or choose another --out"
        )


async def _assess(args: argparse.Namespace) -> int:
    try:
        settings = CjSettings.from_env()
    except ValueError as exc:
        raise InputError(str(exc)) from None
    path, options, resume = _plan(args)
    if resume is not None:
        # The run keeps its batching mode, whatever CJ_* the resuming shell exports.
        try:
            settings = journaled_settings(resume, settings)
        except JournalError as exc:
            raise InputError(str(exc)) from None
    essays = load_essays(path)
    if args.anchors:
        try:
            check_anchors(options.anchors, {e.id for e in essays}, args.anchors)
        except AnchorFileError as exc:
            raise InputError(str(exc)) from None
    if not options.cj_batch_id:
        # Known before the run starts: the Pushgateway groups the run's metrics by it.
        options = dataclasses.replace(options, cj_batch_id=new_cj_batch_id())
    effective = resolve_batching_mode(settings, options.batch, provider=options.provider)
    embedded = None
    if not args.target:  # the embedded server's settings, checked before any work
        refuse_other_providers([j.provider for j in options.judges] or [options.provider])
        embedded = embedded_settings(effective)
    registry = CollectorRegistry()
    metrics = CjMetrics(registry)  # before the start push, which carries its zeros
    # Metrics and tracing first: a flag that cannot be honoured stops the run before any work.
    try:
        tracing = tracing_from_env()
        export = await MetricsExport.start(args, registry=registry, cj_batch_id=options.cj_batch_id)
    except (TracingConfigError, MetricsExportError) as exc:
        raise InputError(str(exc)) from None
    display = make_display(quiet=args.quiet)
    limits = CollectorLimits(
        server_timeout_s=args.server_timeout,
        stall_s=args.stall_timeout,
        result_deadline_s=request_ttl_for(effective, options.request_ttl_s)
        + 120.0,  # LPS ends a request by its TTL
    )
    async with AsyncExitStack() as stack:
        stack.push_async_callback(export.close)
        if tracing is not None:
            stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
        wanted = options.batch.llm_batching_mode_override or settings.llm_batching_mode
        if wanted != effective:
            say(
                f"cj assess: {wanted.value} is not allowed for provider {options.provider} "
                f"(CJ_LLM_BATCH_API_ALLOWED_PROVIDERS); using {effective.value}"
            )
        outcome: list[AssessmentReport] = []
        target = args.target
        if embedded is not None:
            target = await start_embedded_lps(
                stack,
                embedded,
                finished=lambda: bool(outcome) and outcome[0].complete,
                traced=tracing is not None,
            )
        client = await stack.enter_async_context(connect(args, target))
        files = RunFiles(args.out, plot=args.plot)
        try:
            assessment = Assessment(
                essays,
                client=client,
                options=options,
                settings=settings,
                metrics=metrics,
                progress=display,
                limits=limits,
                journal_dir=args.out,
                resume=resume,
                source=str(path.resolve()),
                tracer_provider=tracing,
                on_wave=export.wave_done,
                before_end=files.at_end,
            )
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
        try:
            report, code, cause = await _run(assessment)
        except JournalError as exc:  # found before anything was sent: the outputs stay as they are
            raise InputError(str(exc)) from None
        except OutputWriteError as exc:  # the run ended; its journal records no end, to resume
            report, code, cause = files.unwritten_at_end(exc)
        outcome.append(report)
    display.close()
    # The files first: a reader of stdout that has gone (`| head -1`) must not cost them.
    if not files.unwritten_end:
        report = files.after_run(report)
    return report_and_exit(report, args, code=code, cause=cause, files=files, essays=len(essays))


async def _run(assessment: Assessment) -> tuple[AssessmentReport, int, str]:
    """Run to the end, to an error, or until SIGINT or SIGTERM: (report, exit code, cause)."""
    task = asyncio.ensure_future(assessment.run())
    stopped_by: list[signal.Signals] = []
    loop = asyncio.get_running_loop()
    handled = (signal.SIGINT, signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()

    def interrupt(sig: signal.Signals) -> None:
        stopped_by.append(sig)
        task.cancel()
        for each in handled:  # a second signal ends the process the usual way
            loop.remove_signal_handler(each)

    if in_main:
        for sig in handled:
            loop.add_signal_handler(sig, interrupt, sig)
    try:
        return await task, exit_codes.OK, ""
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        name = stopped_by[0].name
        return assessment.report("interrupted"), 128 + stopped_by[0].value, f"interrupted ({name})"
    except AssessmentError as exc:
        return assessment.report(exc.reason), exit_codes.for_error(exc), f"{exc.reason}: {exc}"
    finally:
        if in_main and not stopped_by:
            for sig in handled:
                loop.remove_signal_handler(sig)


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def _judge(spec: str) -> Judge:
    try:
        return Judge.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
