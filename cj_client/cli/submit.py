"""`cj submit`: send one comparison and print its result."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cj_client.cli.common import Handler, add_connection_flags, run
from cj_client.client import DEFAULT_TARGET, LpsClient
from cj_client.models import (
    PROVIDER_NAMES,
    Ack,
    ComparisonOutcome,
    ComparisonSubmission,
    EssayInput,
)


def register(commands: Any) -> Handler:
    """Add the `submit` subcommand."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "submit", help="compare two essays (files or literal text) and print the verdict"
    )
    parser.add_argument("essay_a", help="path of essay A, or its text")
    parser.add_argument("essay_b", help="path of essay B, or its text")
    parser.add_argument("--provider", default="mock", choices=PROVIDER_NAMES)
    parser.add_argument("--model", default="", help="model (default: the provider's default)")
    parser.add_argument("--instructions", default="Which essay is better written and argued?")
    parser.add_argument("--request-id", default="", help="idempotency key (default: a new UUID)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_connection_flags(parser, default_target=DEFAULT_TARGET)
    return lambda args: run(_submit(args))


def _essay(arg: str, fallback_id: str) -> EssayInput:
    path = Path(arg)
    if len(arg) < 4096 and path.is_file():
        return EssayInput(id=path.stem, text=path.read_text(encoding="utf-8"))
    return EssayInput(id=fallback_id, text=arg)


async def _submit(args: argparse.Namespace) -> int:
    submission = ComparisonSubmission(
        essay_a=_essay(args.essay_a, "A"),
        essay_b=_essay(args.essay_b, "B"),
        request_id=args.request_id or str(uuid.uuid4()),
        instructions=args.instructions,
        provider=args.provider,
        model=args.model,
        metadata={"cj_source": "cj_submit"},
    )
    async with LpsClient(
        target=args.target,
        token=args.token,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    ) as client:
        async for event in client.submit_many([submission]):
            if isinstance(event, Ack) and not event.accepted:
                details = "; ".join(f"{v.field}: {v.description}" for v in event.violations)
                print(f"cj: rejected ({event.error_code}): {details or event.error_message}")
                return 1
            if isinstance(event, ComparisonOutcome):
                _print(event, as_json=args.json)
                return 0 if event.status == "completed" else 1
    print("cj: the server closed the stream without a result", file=sys.stderr)
    return 1


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
