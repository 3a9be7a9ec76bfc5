"""The exit codes of `cj`, one per kind of ending (README and docs/cj.md list them)."""

from __future__ import annotations

from cj_client.backoff import is_retryable
from cj_client.errors import (
    AssessmentError,
    JournalWriteError,
    LpsClientError,
    RunRefusedError,
    ServerLostError,
    TooManyFailuresError,
)

OK = 0
#: The comparison `cj submit` sent ended without a judgement (failed or expired).
NO_VERDICT = 1
#: An input mistake: a missing or malformed essay file, a bad flag, an unusable --out.
USAGE = 2
#: The server refused in a way retrying cannot cure: UNAUTHENTICATED, PERMISSION_DENIED,
#: INVALID_ARGUMENT, ALREADY_EXISTS.
REFUSED = 3
#: The server was unreachable (or refusing for now) for longer than --server-timeout.
SERVER_LOST = 4
#: More than --max-failed-share of the comparisons failed.
TOO_MANY_FAILURES = 5
#: The run's journal in --out could not be written (a full disk, a quota). The run is resumable
#: once there is room.
JOURNAL_UNWRITABLE = 6
#: A file of a run that had ended (ranking.csv, ranking.json, summary.json, scores.png) could not
#: be written: the run is resumable, and `--resume` writes the files once they can be. Also the
#: report on stdout, when it could not be written (the files are written). A run that ended
#: unfinished keeps its own code (3, 4, 6, 130).
OUTPUTS_UNWRITABLE = 7
#: Ctrl-C (SIGINT); SIGTERM gives 143. The run is resumable.
INTERRUPTED = 130


def for_error(exc: AssessmentError | LpsClientError) -> int:
    """The exit code of a run or call that ended with `exc`."""
    if isinstance(exc, TooManyFailuresError):
        return TOO_MANY_FAILURES
    if isinstance(exc, JournalWriteError):
        return JOURNAL_UNWRITABLE
    if isinstance(exc, ServerLostError):
        return SERVER_LOST
    if isinstance(exc, RunRefusedError):
        return REFUSED
    if isinstance(exc, LpsClientError) and is_retryable(exc.code):
        return SERVER_LOST
    return REFUSED


#: The exit codes in words, for `--help`.
SUMMARY = (
    "exit codes: 0 done, 1 no verdict (cj submit), 2 input mistake, 3 refused by the server, "
    "4 server lost, 5 too many failed comparisons, 6 journal unwritable (resumable), "
    "7 output files unwritable (resumable), 130 interrupted (resumable)"
)
