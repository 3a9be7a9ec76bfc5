"""What every `cj` subcommand shares: connection flags and running a command coroutine."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

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


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command coroutine to its exit code."""
    return asyncio.run(coro)
