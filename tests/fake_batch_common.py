"""What the fake batch servers share: the scripts of what goes wrong, the judge that reads each
comparison's marked request id, the batches' bookkeeping, paging, and the one-state-at-a-time rule
(`fake_batch_servers` has the whole story)."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from tests.fake_http import FakeHttpServer, Request, Response

_BLOCK = re.compile(r"^Comparison (\d+):$", re.MULTILINE)
_ITEM = re.compile(r"\[item:([A-Za-z0-9_.:-]+)\]")
USAGE = (900, 120)
# Of USAGE's prompt tokens, those the OpenAI fake reports as read from the cache.
USAGE_CACHED = 300


def marked_ids(prompt: str) -> list[str]:
    """The request ids marked in a prompt's essays, in order (one a comparison)."""
    return _ITEM.findall(prompt)


def expected_winner(request_id: str) -> str:
    """The fake judge's verdict for a marked request: "A" or "B" by a hash of its id."""
    return "A" if hashlib.sha256(request_id.encode()).digest()[0] % 2 == 0 else "B"


def judged(prompt: str) -> dict[str, Any]:
    """The answer to a bundle prompt: every comparison by its marked request id (entries in
    reverse order, so that matching by position instead of index gets them wrong)."""
    blocks = _BLOCK.split(prompt)[1:]
    entries = []
    for number, text in zip(blocks[::2], blocks[1::2], strict=True):
        essay_a = text.split("Essay B:", 1)[0]
        marked = _ITEM.search(essay_a)
        winner = expected_winner(marked.group(1)) if marked else ("A" if int(number) % 2 else "B")
        entries.append(
            {
                "index": int(number),
                "justification": f"Essay {winner} argues more clearly.",
                "winner": winner,
                "confidence": 3,
            }
        )
    return {"comparisons": entries[::-1]}


@dataclass
class BatchScript:
    """What happens to the next batch created.

    Attributes:
        outcome: `completed`, `failed` (OpenAI: at validation), `expired`, or `cancelled`
            (cancelled by the provider's side, as an operator would).
        finished: with `expired`/`cancelled`, how many lines ran before (default: none).
        errors: line number (from 0) -> (HTTP status, message) of a line that fails.
        invalid: line numbers whose answer is not usable JSON.
        steps: state changes take this many seconds each.
    """

    outcome: str = "completed"
    finished: int = 0
    errors: dict[int, tuple[int, str]] = field(default_factory=dict)
    invalid: set[int] = field(default_factory=set)
    steps: float = 0.01


@dataclass
class Batch:
    id: str
    lines: list[dict[str, Any]]
    script: BatchScript
    created_at: float
    started: float
    metadata: dict[str, str] = field(default_factory=dict)
    input_file_id: str = ""
    cancel_asked: float | None = None
    order: list[int] = field(default_factory=list)
    # The state the last status request saw (a batch moves at most one state past it).
    last: str = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class FakeBatches(FakeHttpServer):
    """What both fakes share: scripts, the judge, counting."""

    def __init__(self, *, api_key: str | Collection[str], seed: int = 7) -> None:
        self.api_keys = {api_key} if isinstance(api_key, str) else set(api_key)
        self.problems: list[str] = []
        self.batches: dict[str, Batch] = {}
        self.created: list[str] = []
        self.polls: Counter[str] = Counter()
        self._scripts: list[BatchScript] = []
        self._ids = itertools.count(1)
        self._rng = random.Random(seed)
        super().__init__()

    def script(self, *scripts: BatchScript) -> None:
        """The next batches created follow these scripts, in order (then: completed)."""
        self._scripts.extend(scripts)

    def cancel(self, batch_id: str) -> None:
        """Cancel a batch from the provider's side (an operator in the console)."""
        self.batches[batch_id].cancel_asked = time.monotonic()
        self.changed()

    def _new(self, lines: list[dict[str, Any]], **extra: Any) -> Batch:
        script = self._scripts.pop(0) if self._scripts else BatchScript()
        order = list(range(len(lines)))
        self._rng.shuffle(order)  # output order is not input order
        batch = Batch(
            id=f"batch_{next(self._ids):04d}",
            lines=lines,
            script=script,
            created_at=time.time(),
            started=time.monotonic(),
            order=order,
            **extra,
        )
        self.batches[batch.id] = batch
        self.created.append(batch.id)
        return batch

    def _line_answer(self, batch: Batch, number: int, prompt: str) -> tuple[int, Any]:
        """(HTTP status, answer) of line `number`: an error, unusable content, or the judge's."""
        if number in batch.script.errors:
            return batch.script.errors[number]
        if number in batch.script.invalid:
            return 200, "not json at all"
        return 200, judged(prompt)

    def _ran(self, batch: Batch, number: int) -> bool:
        """Whether line `number` ran before its batch expired or was cancelled."""
        if batch.script.outcome in ("expired", "cancelled") or batch.cancel_asked is not None:
            return number < batch.script.finished
        return True

    def _page(
        self, request: Request, *, cursor: str, extra: dict[str, Any] | None = None
    ) -> Response:
        """A page of the batches, newest first, after the one `cursor` names."""
        newest = [self.batches[b] for b in reversed(self.created)]
        after = request.query.get(cursor)
        if after:
            ids = [b.id for b in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query.get("limit", "20"))
        page = newest[:limit]
        return Response(
            200,
            {
                **(extra or {}),
                "data": [self._object(b) for b in page],
                "has_more": len(newest) > limit,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            },
        )

    def _object(self, batch: Batch) -> dict[str, Any]:
        raise NotImplementedError

    def _prompt(self, line: dict[str, Any]) -> str:
        raise NotImplementedError

    def line_requests(self, batch_id: str) -> list[list[str]]:
        """The marked request ids of each line of a batch, lines in the order sent."""
        return [marked_ids(self._prompt(line)) for line in self.batches[batch_id].lines]

    def _check_key(self, presented: str | None) -> Response | None:
        if presented not in self.api_keys:
            return Response(401, {"error": {"type": "authentication_error", "message": "bad key"}})
        return None


def advance(path: list[str], last: str, target: int) -> tuple[str, int]:
    """The state `target` of `path`, but at most one past `last`."""
    seen = path.index(last) if last in path else -1
    n = min(target, seen + 1)
    return path[n], n


def jsonl(objects: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)
