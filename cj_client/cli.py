"""The `cj` command: `cj submit` sends one comparison, `cj assess` ranks a set of essays."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from cj_client.errors import LpsClientError

Handler = Callable[[argparse.Namespace], int]


def add_connection_flags(parser: argparse.ArgumentParser, *, default_target: str | None) -> None:
    """Flags shared by every command that talks to LPS."""
    parser.add_argument(
        "--target",
        default=os.environ.get("CJ_LPS_TARGET", default_target),
        help="LPS host:port (CJ_LPS_TARGET)",
    )
    parser.add_argument("--token", default=os.environ.get("CJ_LPS_TOKEN"), help="bearer token")
    parser.add_argument("--tls", action="store_true", help="use TLS with system roots")
    parser.add_argument("--tls-ca", help="CA bundle that signed the server certificate")
    parser.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="client certificate key (mutual TLS)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The `cj` command line and a handler per subcommand."""
    from cj_client import cli_assess, cli_submit

    parser = argparse.ArgumentParser(prog="cj", description="Comparative judgement through LPS")
    commands = parser.add_subparsers(dest="command", required=True)
    handlers = {
        "submit": cli_submit.register(commands),
        "assess": cli_assess.register(commands),
    }
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cj` command."""
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except LpsClientError as exc:
        print(f"cj: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command coroutine to its exit code."""
    return asyncio.run(coro)


if __name__ == "__main__":
    raise SystemExit(main())
