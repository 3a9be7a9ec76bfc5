"""The run journal: an append-only record of a CJ run in its output directory, to resume from.

`journal.jsonl` holds one JSON object per line: the run's header (options, batch id, essays'
digest), each wave as it is planned (before it is sent), each result as it arrives, and an end
record once the run has finished. A line is written whole and flushed at once, so a killed
process loses nothing it was told; lines are synced to disk at the end of each wave. A crash can
leave only the last line cut short, and reading ignores it. A finished comparison is never paid
for again on resume: its result is in the journal, and a comparison that was in flight is sent
again under its request id, which the server answers from its store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cj_client.errors import JournalError, JournalWriteError
from cj_client.models import ComparisonOutcome

JOURNAL_NAME = "journal.jsonl"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class PlannedComparison:
    """One comparison of a wave, as planned: enough to send exactly the same request again."""

    request_id: str
    number: int
    essay_a: str
    essay_b: str
    retry: bool


@dataclass(frozen=True, slots=True)
class PlannedWave:
    """A wave as planned, before it was sent."""

    number: int
    comparisons: tuple[PlannedComparison, ...]


@dataclass(slots=True)
class JournalContents:
    """What a journal holds: the header, the waves, the results by request id, the end."""

    header: dict[str, Any]
    waves: list[PlannedWave] = field(default_factory=list)
    results: dict[str, ComparisonOutcome] = field(default_factory=dict)
    end: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """True when the run ended (any further run in its directory starts afresh)."""
        return self.end is not None


def journal_path(directory: Path) -> Path:
    """Where the journal of a run writing to `directory` lives."""
    return directory / JOURNAL_NAME


def journal_started(directory: Path) -> bool:
    """True when the journal in `directory` begins with a whole run header (so that `--resume`
    can continue it); False when there is none, or its header could not be written."""
    try:
        with journal_path(directory).open("rb") as handle:
            first = handle.readline()
        record = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("kind") == "run"


def read_journal(directory: Path) -> JournalContents:
    """The journal in `directory`.

    Raises:
        JournalError: there is none, or it is not a journal this version can read.
    """
    path = journal_path(directory)
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        raise JournalError(f"{path}: no run journal here (nothing to resume)") from None
    except OSError as exc:
        raise JournalError(f"{path}: cannot read the run journal: {exc.strerror}") from None
    records: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # the last line of a killed run may be cut short
                break
            raise JournalError(f"{path}:{number}: not a journal line") from None
        if not isinstance(record, dict):
            raise JournalError(f"{path}:{number}: not a journal line")
        records.append((number, record))
    if not records or records[0][1].get("kind") != "run":
        raise JournalError(f"{path}: does not start with a run header")
    header = records[0][1]
    if header.get("version") != FORMAT_VERSION:
        raise JournalError(f"{path}: journal version {header.get('version')} is not supported")
    contents = JournalContents(header=header)
    for number, record in records[1:]:
        try:
            _absorb(contents, record)
        except (KeyError, TypeError, ValueError) as exc:
            kind = record.get("kind")
            raise JournalError(f"{path}:{number}: malformed {kind} record: {exc}") from None
    return contents


def _absorb(contents: JournalContents, record: dict[str, Any]) -> None:
    kind = record.get("kind")
    if kind == "wave":
        planned = tuple(PlannedComparison(**c) for c in record["comparisons"])
        contents.waves.append(PlannedWave(int(record["number"]), planned))
    elif kind == "result":
        outcome = _outcome(record["outcome"])
        contents.results[outcome.request_id] = outcome
    elif kind == "end":
        contents.end = record


class RunJournal:
    """Appends a run's records to its journal; `create` starts a new one, `append` continues.

    A record that cannot be written whole (a full disk, a quota, a file-size limit) is cut
    back off, so the journal still ends with a whole line, and raises JournalWriteError naming
    the file and the system's reason.
    """

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self._handle = handle
        self._path = path
        self._size = handle.seek(0, os.SEEK_END)  # where the last whole line ends
        self._broken = False

    @classmethod
    def create(cls, directory: Path, header: dict[str, Any]) -> RunJournal:
        """A new journal in `directory` (replacing a finished one) starting with `header`.

        Raises:
            JournalWriteError: it cannot be written.
        """
        path = journal_path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle = path.open("wb", buffering=0)
        except OSError as exc:
            raise _unwritable(path, exc) from None
        journal = cls(handle, path)
        try:
            journal._write({"kind": "run", "version": FORMAT_VERSION, **header})
            journal.sync()
        except JournalWriteError:
            handle.close()  # no journal is returned to close it
            raise
        return journal

    @classmethod
    def append(cls, directory: Path) -> RunJournal:
        """The journal in `directory`, opened to continue it. A last line cut short by a crash
        (which reading ignores) is dropped first: a record appended to it would be lost with it,
        and the journal could no longer be read.

        Raises:
            JournalWriteError: it cannot be written.
        """
        path = journal_path(directory)
        try:
            data = path.read_bytes()
            if not data.endswith(b"\n"):
                with path.open("r+b") as raw:
                    raw.truncate(data.rfind(b"\n") + 1)
            handle = path.open("ab", buffering=0)
        except OSError as exc:
            raise _unwritable(path, exc) from None
        return cls(handle, path)

    def wave(self, wave: PlannedWave) -> None:
        """Record a wave before it is sent."""
        comparisons = [dataclasses.asdict(c) for c in wave.comparisons]
        self._write({"kind": "wave", "number": wave.number, "comparisons": comparisons})

    def result(self, outcome: ComparisonOutcome) -> None:
        """Record a final result as it arrives."""
        record = dataclasses.asdict(outcome)
        record["metadata"] = dict(outcome.metadata)
        self._write({"kind": "result", "outcome": record})

    def end(self, **facts: Any) -> None:
        """Record that the run finished."""
        self._write({"kind": "end", **facts})
        self.sync()

    def sync(self) -> None:
        """Push what was written to disk."""
        try:
            os.fsync(self._handle.fileno())
        except OSError as exc:
            self._broken = True
            raise _unwritable(self._path, exc) from None

    def close(self) -> None:
        """Sync and close (after a failed write, only close: the failure was reported)."""
        if self._handle.closed:
            return
        try:
            if not self._broken:
                self.sync()
        finally:
            self._handle.close()

    def _write(self, record: dict[str, Any]) -> None:
        # Unbuffered, one line at a time: the process may be killed at any point after it.
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        rest = memoryview(line)
        try:
            while rest:
                rest = rest[self._handle.write(rest) :]  # a full disk may take part of it
        except OSError as exc:
            self._broken = True
            with contextlib.suppress(OSError):
                self._handle.truncate(self._size)  # no line cut short left behind
            raise _unwritable(self._path, exc) from None
        self._size += len(line)


def _unwritable(path: Path, exc: OSError) -> JournalWriteError:
    # The hint only where it is the cure: a read-only directory is not cured by making room.
    room = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    hint = " (make room, or lift the quota or file-size limit)" if room else ""
    return JournalWriteError(f"{path}: cannot write the run journal: {exc.strerror or exc}{hint}")


def _outcome(record: dict[str, Any]) -> ComparisonOutcome:
    names = {f.name for f in dataclasses.fields(ComparisonOutcome)}
    return ComparisonOutcome(**{k: v for k, v in record.items() if k in names})
