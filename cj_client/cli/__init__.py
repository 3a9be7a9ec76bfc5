"""The `cj` command: `cj submit` sends one comparison, `cj assess` ranks a set of essays."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

from cj_client.cli import assess, exit_codes, submit
from cj_client.cli.common import Handler, OneLineParser
from cj_client.errors import InputError, LpsClientError, OutputWriteError


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The `cj` command line and a handler per subcommand."""
    parser = OneLineParser(
        prog="cj",
        description="Comparative judgement through LPS",
        epilog=exit_codes.SUMMARY,
    )
    parser.add_argument("--version", action="version", version=f"cj {version('lps')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers = {
        "submit": submit.register(commands),
        "assess": assess.register(commands),
    }
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cj` command."""
    parser, handlers = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a flag mistake (already printed)
        return stop.code if isinstance(stop.code, int) else exit_codes.USAGE
    try:
        return handlers[args.command](args)
    except InputError as exc:
        print(f"cj {args.command}: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except LpsClientError as exc:
        print(f"cj {args.command}: {exc.code}: {exc}", file=sys.stderr)
        return exit_codes.for_error(exc)
    except OutputWriteError as exc:  # `cj submit > file` on a full disk
        print(f"cj {args.command}: {exc}", file=sys.stderr)
        return exit_codes.OUTPUTS_UNWRITABLE
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
