"""What every `cj` subcommand shares: connection flags, flag types and running a command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from cj_client.client import LpsClient
from cj_client.errors import InputError, OutputWriteError
from cj_client.whole_files import write_whole

Handler = Callable[[argparse.Namespace], int]
#: The longest wait a flag may ask for (30 days): `inf` or `1e300` would be no deadline at all.
MAX_SECONDS = 30 * 86_400.0


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the flag, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def add_connection_flags(parser: argparse.ArgumentParser, *, default_target: str | None) -> None:
    """Flags shared by every command that talks to LPS."""
    target_help = "LPS host:port (CJ_LPS_TARGET)"
    if default_target is None:
        target_help += "; without it an embedded LPS runs in this process"
    else:
        target_help += f"; default {default_target}"
    parser.add_argument(
        "--target",
        type=target_address,
        default=os.environ.get("CJ_LPS_TARGET", default_target),
        metavar="HOST:PORT",
        help=target_help,
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CJ_LPS_TOKEN"),
        help="bearer token, when the server requires one (CJ_LPS_TOKEN)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="CA bundle that signed the server certificate (TLS)"
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="client certificate's key (mutual TLS)")


def connect(args: argparse.Namespace, target: str) -> LpsClient:
    """A client for `target` with the connection flags.

    Raises:
        InputError: a TLS file named by a flag cannot be read.
    """
    for flag, value in (
        ("--tls-ca", args.tls_ca),
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
    ):
        if value is not None and not os.access(value, os.R_OK):
            raise InputError(f"{flag} {value}: no readable file there")
    return LpsClient(
        target=target,
        token=args.token,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(_number(text, int, "an integer"))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds (every wait has a deadline)."""
    value = float(_number(text, float, "a number of seconds"))
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_SECONDS:g}, got {text}"
        )
    return value


def share(text: str) -> float:
    """An argparse type: a share between 0 and 1."""
    value = float(_number(text, float, "a number"))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port (0 picks a free one)."""
    value = int(_number(text, int, "a port number"))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 0 and 65535, got {value}")
    return value


def target_address(text: str) -> str:
    """An argparse type: a gRPC target whose ports are TCP ports (grpc would take port 99999 as
    port 34463, and look for the server there)."""
    if text.startswith(("unix:", "unix-abstract:", "vsock:")):
        return text
    addresses = text.split(":", 1)[1] if text.startswith(("ipv4:", "ipv6:")) else text
    if addresses.startswith("dns:"):
        addresses = addresses.removeprefix("dns:").rsplit("/", 1)[-1]
    for address in addresses.split(","):
        host, colon, number = address.rpartition(":")
        if not colon or (":" in host and not host.endswith("]")):
            continue  # no port given (or a bare IPv6 address): grpc picks the default
        if not number.isdigit() or not 1 <= int(number) <= 65535:
            raise argparse.ArgumentTypeError(
                f"{text!r}: the port must be a number between 1 and 65535, got {number!r}"
            )
    return text


def out_directory(path: Path) -> Path:
    """`path` as an output directory, created if missing.

    Raises:
        InputError: it is a file, or cannot be created or written.
    """
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {path}: cannot create the directory: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise InputError(f"--out {path}: the directory is not writable")
    return path


def output_file(flag: str, path: Path) -> Path:
    """`path` as a file a command will write, its directory created if missing; checked before
    the work whose result it is to hold.

    Raises:
        InputError: the path is a directory, its directory cannot be created, or either is not
            writable.
    """
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory, not a file")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{flag} {path}: {_blocking_file(parent)} is not a directory") from None
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot create {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{flag} {path}: not writable")
    return path


def write_text(flag: str, path: Path, text: str) -> None:
    """Write `text` to the file `path` a flag names.

    Raises:
        InputError: it cannot be written (the message names the flag and the file).
    """
    try:
        write_whole([(output_file(flag, path), text.encode("utf-8"))])
    except OutputWriteError as exc:  # written whole or not at all, never cut short
        raise InputError(f"{flag} {exc}") from None


def _blocking_file(path: Path) -> Path:
    """The nearest of `path` and its ancestors that exists (a file, where a directory should be)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@contextmanager
def stdout_may_close() -> Iterator[None]:
    """Stop writing to stdout, quietly, once its reader has gone (`cj assess ... | head -1`).

    Whatever the command does after (files, its exit code) is unchanged. The closed pipe is
    replaced by /dev/null, so that nothing still buffered for it fails again at exit.

    Raises:
        OutputWriteError: stdout could not be written for another reason (a full disk under
            `> file`); it too is replaced by /dev/null.
    """
    try:
        yield
        sys.stdout.flush()  # a pipe's buffer: its error is found here, not at exit
    except BrokenPipeError:
        _stdout_to_devnull()
    except OSError as exc:
        _stdout_to_devnull()
        raise OutputWriteError("stdout", exc.strerror or str(exc)) from None


def _stdout_to_devnull() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file descriptor (stdout captured in a library's caller)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command coroutine to its exit code."""
    return asyncio.run(coro)


def say(text: str) -> None:
    """A line for the user on stderr (progress, warnings, the cause of a failure)."""
    print(text, file=sys.stderr, flush=True)


def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
