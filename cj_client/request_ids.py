"""Request ids of a CJ run: stable across retries of one comparison, new for a new comparison.

An id is `<cj_batch_id>:<n>:<essay_a>:<essay_b>:<digest>`. `n` numbers the run's comparisons
(0, 1, ...): a comparison resubmitted after a broken stream, a lost request or an interrupted run
keeps its id, so the server answers it from its store instead of asking the provider again, while
a failed comparison tried again is comparison `n + k`, a new request. `digest` covers what decides
the verdict (both essays, the instructions, provider, model and overrides), so a rerun of a batch
id whose essays changed asks new questions instead of reading old answers.

A correlation id is `<cj_batch_id>:<essay_a>:<essay_b>`. Both kinds of id fit LPS's 256
characters: essay ids that would make them longer are replaced by a digest of the pair, and a
batch id is at most MAX_BATCH_ID_CHARS long.
"""

from __future__ import annotations

import hashlib
import json

from cj_client.models import ComparisonSubmission, EssayInput

DIGEST_CHARS = 16
# LPS refuses longer ids (request, correlation and essay ids); longer essay ids are replaced by
# a digest of the pair.
MAX_REQUEST_ID_CHARS = 256
# Room left in a request id for the comparison's number (up to 21 digits) and two digests.
MAX_BATCH_ID_CHARS = MAX_REQUEST_ID_CHARS - 2 * DIGEST_CHARS - 24


def verdict_digest(submission: ComparisonSubmission) -> str:
    """A short hex digest of the fields of `submission` that decide its verdict."""
    fields = [
        submission.essay_a.id,
        submission.essay_a.text,
        submission.essay_b.id,
        submission.essay_b.text,
        submission.instructions,
        submission.provider,
        submission.model,
        submission.temperature,
        submission.max_tokens,
        submission.system_prompt,
    ]
    return _sha256(fields)[:DIGEST_CHARS]


def comparison_request_id(cj_batch_id: str, number: int, submission: ComparisonSubmission) -> str:
    """The request id of comparison `number` of a run, for `submission` (its id ignored)."""
    a, b = submission.essay_a.id, submission.essay_b.id
    digest = verdict_digest(submission)
    request_id = f"{cj_batch_id}:{number}:{a}:{b}:{digest}"
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        request_id = f"{cj_batch_id}:{number}:{_sha256([a, b])[:DIGEST_CHARS]}:{digest}"
    return request_id


def comparison_correlation_id(cj_batch_id: str, essay_a: str, essay_b: str) -> str:
    """The correlation id of a comparison of `essay_a` with `essay_b` in batch `cj_batch_id`."""
    correlation_id = f"{cj_batch_id}:{essay_a}:{essay_b}"
    if len(correlation_id) > MAX_REQUEST_ID_CHARS:
        correlation_id = f"{cj_batch_id}:{_sha256([essay_a, essay_b])[:DIGEST_CHARS]}"
    return correlation_id


def essays_digest(essays: list[EssayInput]) -> str:
    """A digest of a run's essays (ids and texts, in order), to tell whether they changed."""
    return _sha256([[e.id, e.text] for e in essays])


def _sha256(value: object) -> str:
    encoded = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()
