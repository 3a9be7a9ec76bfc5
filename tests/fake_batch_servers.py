"""Local stand-ins for OpenAI's Batch API (files + batches) and Anthropic's Message Batches, with
their state machines, run in milliseconds.

OpenAI: `POST /v1/files` (multipart, purpose=batch), `POST /v1/batches`, `GET /v1/batches[/{id}]`,
`POST /v1/batches/{id}/cancel`, `GET /v1/files/{id}/content`; a batch goes validating ->
in_progress -> finalizing -> completed (or failed at validation, expired, cancelling ->
cancelled), its answers in an output file and its failed lines in an error file, in shuffled order.
Anthropic: `POST /v1/messages/batches`, `GET /v1/messages/batches[/{id}]`, `.../cancel`,
`.../results`; in_progress -> (canceling ->) ended, `request_counts`, results as JSONL of
succeeded / errored / canceled / expired lines, in shuffled order.

Every line's request is validated as the synchronous API would validate it (the checks of
`fake_llm_servers`), and problems are listed in `problems`. Each line is answered by a judge that
reads the request id marked in essay A of every comparison (`item_marker`), so that a client that
maps answers to the wrong line or position gets a verdict that disagrees with `expected_winner`.
Tests script what goes wrong with `script(BatchScript(...))`.
"""

from tests.fake_anthropic_batches import FakeAnthropicBatches
from tests.fake_batch_common import USAGE, BatchScript, expected_winner, judged
from tests.fake_openai_batches import FakeOpenAIBatches

__all__ = [
    "USAGE",
    "BatchScript",
    "FakeAnthropicBatches",
    "FakeOpenAIBatches",
    "expected_winner",
    "judged",
]
