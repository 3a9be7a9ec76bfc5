"""The OpenAI and Anthropic batch adapters against fake batch servers with the real state
machines: lines built as synchronous requests, answers mapped back by custom id and index (the
fakes answer out of order), per-line failures classified, batch prices, expired and cancelled
batches, and a batch found again after its creation's answer was lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from lps_server.core.domain import ErrorCode, Essay, Overrides, ProviderName, Winner
from lps_server.providers.anthropic import AnthropicProvider
from lps_server.providers.base import ComparisonItem, ItemFailure, ItemOutcome, ItemSuccess
from lps_server.providers.batch_anthropic import AnthropicBatchApi
from lps_server.providers.batch_base import (
    BatchApi,
    BatchLine,
    BatchOutcome,
    BatchSpec,
    BatchStatus,
    CreationUnknown,
)
from lps_server.providers.batch_openai import OpenAIBatchApi
from lps_server.providers.http_settings import HttpProviderSettings, PriceTable, Secret
from lps_server.providers.openai_compat import OpenAICompatibleProvider
from tests.fake_batch_servers import (
    USAGE,
    BatchScript,
    FakeAnthropicBatches,
    FakeOpenAIBatches,
    expected_winner,
)
from tests.fake_llm_servers import item_marker

KEY = "sk-batch-test"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
FLAVOURS = ["openai", "anthropic"]
Fake = FakeOpenAIBatches | FakeAnthropicBatches


@dataclass
class Rig:
    server: Fake
    api: BatchApi
    prices: PriceTable
    states: list[str] = field(default_factory=list)


@asynccontextmanager
async def rig(flavour: str, *, timeout_s: float = 5.0) -> AsyncIterator[Rig]:
    server: Fake = (
        FakeOpenAIBatches(api_key=KEY) if flavour == "openai" else FakeAnthropicBatches(api_key=KEY)
    )
    async with server:
        settings = HttpProviderSettings(
            provider=ProviderName.OPENAI if flavour == "openai" else ProviderName.ANTHROPIC,
            base_url=server.base_url,
            api_key=Secret(KEY),
            default_model=MODELS[flavour],
            timeout_s=timeout_s,
            configured=True,
        )
        if flavour == "openai":
            api: BatchApi = OpenAIBatchApi(OpenAICompatibleProvider(settings))
        else:
            api = AnthropicBatchApi(AnthropicProvider(settings))
        try:
            yield Rig(server, api, settings.prices)
        finally:
            await api.aclose()


def spec(lines: int, per_line: int, *, job: str = "job0123456789abcdef0123") -> BatchSpec:
    """A job of `lines` lines of `per_line` marked comparisons each."""
    built = []
    for n in range(lines):
        items = tuple(
            ComparisonItem(
                key=f"r{n}-{i}",
                essay_a=Essay(f"a{n}{i}", f"{item_marker(f'r{n}-{i}')} Later starts help sleep."),
                essay_b=Essay(f"b{n}{i}", "Buses cost money and sports practice moves."),
                instructions="Which essay argues better?",
            )
            for i in range(per_line)
        )
        built.append(BatchLine(f"{job}-{n}", items))
    return BatchSpec(job, "", Overrides(), tuple(built))


def with_model(s: BatchSpec, flavour: str) -> BatchSpec:
    return BatchSpec(s.job_id, MODELS[flavour], s.overrides, s.lines)


async def ended(r: Rig, batch_id: str) -> BatchStatus:
    """Poll the batch as LPS would (every 5 ms here), within a deadline, until it has ended;
    the states seen, each once, in `r.states`."""
    deadline = time.monotonic() + 10
    while True:
        status = await r.api.status(batch_id)
        if not r.states or r.states[-1] != status.state:
            r.states.append(status.state)
        if status.ended:
            return status
        assert time.monotonic() < deadline, f"batch {batch_id} never ended: {status}"
        await asyncio.sleep(0.005)


def verdict(outcome: ItemOutcome) -> str:
    assert isinstance(outcome, ItemSuccess), outcome
    return "A" if outcome.judgement.winner == Winner.ESSAY_A else "B"


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_completed_batch_answers_every_item_by_custom_id_and_index(flavour: str) -> None:
    job = with_model(spec(5, 3), flavour)
    async with rig(flavour) as r:
        batch_id = await r.api.create(job)
        status = await ended(r, batch_id)
        found = await r.api.results(batch_id, job, status)
        assert r.server.problems == []
        assert r.server.created == [batch_id]
    assert status.outcome == BatchOutcome.COMPLETED
    if flavour == "openai":
        assert r.states == ["validating", "in_progress", "finalizing", "completed"]
    else:
        assert r.states == ["in_progress", "ended"]
        assert status.counts["succeeded"] == len(job.lines)
    assert set(found) == {line.custom_id for line in job.lines}
    share = (USAGE[0] // 3, USAGE[1] // 3)
    for line in job.lines:
        for item, outcome in zip(line.items, found[line.custom_id], strict=True):
            assert verdict(outcome) == expected_winner(item.key), (line.custom_id, item.key)
            assert isinstance(outcome, ItemSuccess)
            # The provider's usage split over the line's items, priced at half the sync price.
            assert outcome.usage.total_tokens in {sum(share), sum(share) + 1, sum(share) + 2}
            sync = r.prices.cost(job.model, outcome.usage)
            assert sync > 0
            assert outcome.cost_usd == pytest.approx(0.5 * sync)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_failed_lines_fail_alone_classified_as_in_synchronous_calls(flavour: str) -> None:
    job = with_model(spec(4, 2), flavour)
    async with rig(flavour) as r:
        r.server.script(
            BatchScript(errors={1: (400, "prompt is too long"), 2: (529, "overloaded")})
        )
        batch_id = await r.api.create(job)
        found = await r.api.results(batch_id, job, await ended(r, batch_id))
    assert [verdict(o) for o in found[job.lines[0].custom_id]] == [
        expected_winner(i.key) for i in job.lines[0].items
    ]
    refused = found[job.lines[1].custom_id]
    assert all(isinstance(o, ItemFailure) and not o.retryable for o in refused)
    assert all("prompt is too long" in o.message for o in refused if isinstance(o, ItemFailure))
    overloaded = found[job.lines[2].custom_id]
    assert all(isinstance(o, ItemFailure) and o.retryable for o in overloaded)
    assert all(isinstance(o, ItemSuccess) for o in found[job.lines[3].custom_id])


async def test_an_unusable_answer_fails_its_line_retryably() -> None:
    job = with_model(spec(2, 2), "openai")
    async with rig("openai") as r:
        r.server.script(BatchScript(invalid={0}))
        batch_id = await r.api.create(job)
        found = await r.api.results(batch_id, job, await ended(r, batch_id))
    bad = found[job.lines[0].custom_id]
    assert all(isinstance(o, ItemFailure) and o.code == ErrorCode.INVALID_RESPONSE for o in bad)
    assert all(isinstance(o, ItemSuccess) for o in found[job.lines[1].custom_id])


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_an_expired_batch_keeps_its_finished_lines_and_expires_the_rest(flavour: str) -> None:
    job = with_model(spec(4, 2), flavour)
    async with rig(flavour) as r:
        r.server.script(BatchScript(outcome="expired", finished=1))
        batch_id = await r.api.create(job)
        status = await ended(r, batch_id)
        found = await r.api.results(batch_id, job, status)
    assert status.outcome == BatchOutcome.EXPIRED
    assert r.states[-1] == ("expired" if flavour == "openai" else "ended")
    assert all(isinstance(o, ItemSuccess) for o in found[job.lines[0].custom_id])
    for line in job.lines[1:]:
        outcomes = found[line.custom_id]
        assert all(isinstance(o, ItemFailure) and o.code == ErrorCode.TIMEOUT for o in outcomes)
        assert all(o.retryable for o in outcomes if isinstance(o, ItemFailure))


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_cancelled_batch_keeps_its_finished_lines(flavour: str) -> None:
    job = with_model(spec(3, 2), flavour)
    async with rig(flavour) as r:
        r.server.script(BatchScript(finished=2, steps=0.2))
        batch_id = await r.api.create(job)
        await r.api.cancel(batch_id)
        cancelling = await r.api.status(batch_id)
        status = await ended(r, batch_id)
        found = await r.api.results(batch_id, job, status)
    assert cancelling.state in ("cancelling", "canceling")
    assert not cancelling.ended
    assert status.outcome == BatchOutcome.CANCELLED
    assert r.states[-2:] == (
        ["cancelling", "cancelled"] if flavour == "openai" else ["canceling", "ended"]
    )
    for line in job.lines[:2]:
        assert all(isinstance(o, ItemSuccess) for o in found[line.custom_id])
    cancelled = found[job.lines[2].custom_id]
    assert all(isinstance(o, ItemFailure) and not o.retryable for o in cancelled)
    assert all("cancelled" in o.message for o in cancelled if isinstance(o, ItemFailure))


async def test_a_batch_failed_at_validation_says_why() -> None:
    job = with_model(spec(2, 1), "openai")
    async with rig("openai") as r:
        r.server.script(BatchScript(outcome="failed"))
        batch_id = await r.api.create(job)
        status = await ended(r, batch_id)
        found = await r.api.results(batch_id, job, status)
    assert status.outcome == BatchOutcome.FAILED
    assert r.states == ["validating", "failed"]
    assert "does not support batches" in status.error
    assert found == {}


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_batch_whose_creation_answer_was_lost_is_found_not_made_twice(flavour: str) -> None:
    job = with_model(spec(3, 2), flavour)
    # Another job of the same size: Anthropic's batches carry no metadata, so only the claim of
    # its batch by its own job tells them apart.
    other = with_model(spec(3, 2, job="otherjob0123456789abcd"), flavour)
    async with rig(flavour, timeout_s=0.5) as r:
        started = time.time()
        theirs = await r.api.create(other)
        pattern = "/v1/batches" if flavour == "openai" else "/v1/messages/batches"
        r.server.hang_next("POST", pattern)
        with pytest.raises(CreationUnknown):
            await r.api.create(job)
        assert len(r.server.created) == 2  # it did reach the provider
        lost = r.server.created[1]

        async def claims(batch_id: str) -> str | None:
            return other.job_id if batch_id == theirs else None

        assert await r.api.find(job, since=started, claimed=claims) == lost
        smaller = with_model(spec(1, 1, job="j" * 24), flavour)
        assert await r.api.find(smaller, since=started, claimed=claims) is None
        assert r.server.problems == []
