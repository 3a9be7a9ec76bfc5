"""Writing a run's output files whole: a full disk or an unwritable directory met half-way leaves
every file as it was, never one cut short.

The files are written in two steps. First each file's bytes go to a temporary file beside it
(`.<name>.<random>.tmp`, in the same directory so that a rename can replace the file), synced to
disk. Only once every one of them is written is each renamed over its name: a rename takes no room
and either happens or not. A failure in the first step, which is where a full disk, a quota or a
directory made read-only shows, changes none of the files, and the temporary files are removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cj_client.errors import OutputWriteError


def write_whole(files: Sequence[tuple[Path, bytes]]) -> list[Path]:
    """Write each `(path, data)`, all or none (see the module docstring); returns the paths.

    Raises:
        OutputWriteError: a file could not be written (named, with the system's reason).
    """
    staged: list[tuple[Path, Path]] = []  # (temporary file, its final name)
    try:
        for path, data in files:
            _stage(path, data, staged)
        for _, path in staged:
            # Found before anything is renamed: a directory put where a file goes while the run
            # ran would make the rename fail half-way through the set.
            if path.is_dir():
                raise OutputWriteError(str(path), "Is a directory")
        for temporary, path in staged:
            try:
                os.replace(temporary, path)
            except OSError as exc:
                raise OutputWriteError(str(path), _reason(exc)) from None
    finally:
        for temporary, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    for directory in {path.parent for _, path in staged}:
        _sync_directory(directory)
    return [path for _, path in staged]


def _stage(path: Path, data: bytes, staged: list[tuple[Path, Path]]) -> None:
    """Write `data` to a new temporary file beside `path`, recorded in `staged` once it exists."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # The mode an ordinary open() gives (0o666 less the umask), not mkstemp's 0o600.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        staged.append((temporary, path))
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # a crash after the rename finds the whole file
    except OSError as exc:
        raise OutputWriteError(str(path), _reason(exc)) from None


def _sync_directory(directory: Path) -> None:
    # Makes the renames durable; a filesystem that cannot sync a directory loses nothing by it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
