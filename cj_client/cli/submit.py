"""`cj submit`: compare two essay files (or two texts, with --text) and print the verdict."""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cj_client.cli import exit_codes
from cj_client.cli.common import (
    Handler,
    add_connection_flags,
    connect,
    run,
    say,
    seconds,
    stdout_may_close,
)
from cj_client.client import DEFAULT_TARGET
from cj_client.errors import InputError
from cj_client.models import PROVIDER_NAMES, ComparisonOutcome, ComparisonSubmission, EssayInput

DEFAULT_TIMEOUT_S = 120.0


def register(commands: Any) -> Handler:
    """Add the `submit` subcommand."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "submit",
        help="compare two essays and print the verdict",
        description="Compare two essays through LPS and print the verdict, tokens and timing.",
        epilog=exit_codes.SUMMARY,
    )
    parser.add_argument(
        "essay_a", metavar="A", help="essay A: a UTF-8 text file (or, with --text, the text)"
    )
    parser.add_argument(
        "essay_b", metavar="B", help="essay B: a UTF-8 text file (or, with --text, the text)"
    )
    parser.add_argument(
        "--text", action="store_true", help="A and B are the essays' texts, not file paths"
    )
    parser.add_argument(
        "--provider", default="mock", choices=PROVIDER_NAMES, help="LLM provider (default mock)"
    )
    parser.add_argument("--model", default="", help="model (default: the provider's default)")
    parser.add_argument(
        "--instructions",
        default="Which essay is better written and argued?",
        help="the assessment prompt the judge is given",
    )
    parser.add_argument(
        "--request-id",
        default="",
        help="idempotency key: the same id with the same essays returns the stored verdict "
        "(default: a new UUID)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="give up without a verdict after this long; an unreachable or busy server is "
        f"retried until then (default {DEFAULT_TIMEOUT_S:g})",
    )
    add_connection_flags(parser, default_target=DEFAULT_TARGET)
    return lambda args: run(_submit(args))


def essay(arg: str, *, as_text: bool, fallback_id: str) -> EssayInput:
    """The essay an argument names: a file (id = its stem), or with `as_text` the text itself.

    Raises:
        InputError: the file is missing or not UTF-8 text, or the essay is empty.
    """
    if as_text:
        if not arg.strip():
            raise InputError(f"essay {fallback_id}: the text is empty")
        return EssayInput(id=fallback_id, text=arg)
    path = Path(arg)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise InputError(
            f"essay {fallback_id}: {arg} {what} (give a text file, or --text to compare texts)"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"essay {fallback_id}: {arg} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"essay {fallback_id}: cannot read {arg}: {exc.strerror}") from None
    if "\0" in text or not text.strip():
        raise InputError(f"essay {fallback_id}: {arg} is {'binary' if text.strip() else 'empty'}")
    return EssayInput(id=path.stem, text=text)


async def _submit(args: argparse.Namespace) -> int:
    submission = ComparisonSubmission(
        essay_a=essay(args.essay_a, as_text=args.text, fallback_id="A"),
        essay_b=essay(args.essay_b, as_text=args.text, fallback_id="B"),
        request_id=args.request_id or str(uuid.uuid4()),
        instructions=args.instructions,
        provider=args.provider,
        model=args.model,
        metadata={"cj_source": "cj_submit"},
    )
    async with connect(args, args.target) as client:
        outcome = await client.submit_and_wait(
            submission,
            timeout=args.timeout,
            on_retry=lambda exc: say(
                f"cj submit: {exc.code}: {exc}; retrying for up to {args.timeout:g} s (--timeout)"
            ),
        )
    with stdout_may_close():
        _print(outcome, as_json=args.json)
    return exit_codes.OK if outcome.status == "completed" else exit_codes.NO_VERDICT


def _print(outcome: ComparisonOutcome, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(outcome), indent=2, default=dict))
        return
    print(f"request   {outcome.request_id}")
    print(f"status    {outcome.status}")
    if outcome.winner:
        print(f"winner    {outcome.winner} (confidence {outcome.confidence}/5)")
        print(f"why       {outcome.justification}")
    if outcome.error_message:
        print(f"error     {outcome.error_code}: {outcome.error_message}")
    print(f"provider  {outcome.provider} / {outcome.model}")
    tokens = outcome.prompt_tokens + outcome.completion_tokens
    print(f"tokens    {tokens}   cost ${outcome.cost_usd:.6f}   {outcome.response_time_s:.3f}s")
