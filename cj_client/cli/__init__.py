"""The `cj` command: `cj submit` sends one comparison, `cj assess` ranks a set of essays."""

from __future__ import annotations

import argparse
import sys

from cj_client.cli import assess, submit
from cj_client.cli.common import Handler
from cj_client.errors import LpsClientError


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The `cj` command line and a handler per subcommand."""
    parser = argparse.ArgumentParser(prog="cj", description="Comparative judgement through LPS")
    commands = parser.add_subparsers(dest="command", required=True)
    handlers = {
        "submit": submit.register(commands),
        "assess": assess.register(commands),
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
