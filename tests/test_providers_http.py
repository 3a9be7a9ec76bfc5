"""The HTTP providers against local servers that implement and validate each provider's endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import time

import httpx
import pytest

from lps_server.core.domain import (
    CircuitState,
    ErrorCode,
    Overrides,
    ProviderName,
    TokenUsage,
    Winner,
)
from lps_server.providers.base import ItemFailure, ItemSuccess, ProviderCallError
from lps_server.providers.call_report import CallReport
from lps_server.providers.circuit_breaker import CircuitBreaker
from lps_server.providers.http_errors import parse_retry_after
from lps_server.providers.http_settings import BundleCalls, PriceTable, Secret
from tests.fake_llm_servers import Reply
from tests.provider_rig import (
    FLAVOURS,
    INSTRUCTIONS,
    MODELS,
    SECRET,
    FakeClock,
    call_error,
    compare,
    items,
    rig,
)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_bundle_of_n_is_one_http_call_with_n_judgements(flavour: str) -> None:
    async with rig(flavour) as r:
        outcomes = await compare(r, 4, temperature=0.5, max_tokens=300)

    assert r.server.problems == []
    assert len(r.server.calls) == 1
    call = r.server.calls[0]
    assert call.comparisons == 4
    assert call.prompt.count(INSTRUCTIONS) == 1, "shared instructions are stated once"
    assert call.body["model"] == MODELS[flavour]
    budget = call.body.get("max_tokens") or call.body.get("max_completion_tokens")
    assert budget == 4 * 300
    assert call.body["temperature"] == 0.5
    assert all(isinstance(o, ItemSuccess) for o in outcomes)
    winners = [o.judgement.winner for o in outcomes]
    assert winners == [Winner.ESSAY_A, Winner.ESSAY_B, Winner.ESSAY_A, Winner.ESSAY_B]
    assert [o.judgement.confidence for o in outcomes] == [2, 3, 4, 5]
    # 1003 prompt and 250 completion tokens, split evenly, adding up to the provider's figures.
    assert [o.usage.prompt_tokens for o in outcomes] == [251, 251, 251, 250]
    assert sum(o.usage.completion_tokens for o in outcomes) == 250
    price = PriceTable().prices[MODELS[flavour]]
    assert outcomes[0].cost_usd == pytest.approx(price.cost(outcomes[0].usage))
    assert outcomes[0].cost_usd > 0


async def test_differing_instructions_go_with_each_comparison() -> None:
    mixed = [*items(1, "Judge the argument."), *items(1, "Judge the spelling.")]
    async with rig("openai") as r:
        await r.provider.compare(mixed, model="gpt-4o-mini", overrides=Overrides())
    prompt = r.server.calls[0].prompt
    assert prompt.index("Judge the argument.") < prompt.index("Comparison 2:")
    assert prompt.index("Judge the spelling.") > prompt.index("Comparison 2:")


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_bad_items_in_an_answer_fail_alone(flavour: str) -> None:
    good = {"justification": "Clearer.", "winner": "A", "confidence": 4}
    answer = {
        "comparisons": [
            {"index": 1, **good},
            # 2 is missing
            {"index": 3, **good, "winner": "C"},
            {"index": 4, **good},
            {"index": 4, **good, "winner": "B"},
            {"index": 5, **good, "confidence": 9},
            {"index": 6, **good, "justification": "x" * 900},
            {"index": 99, **good},
            "not an entry",
        ]
    }
    async with rig(flavour) as r:
        r.server.script(Reply(answer=answer))
        outcomes = await compare(r, 6)

    assert r.server.problems == []
    assert isinstance(outcomes[0], ItemSuccess)
    assert isinstance(outcomes[5], ItemSuccess)
    assert len(outcomes[5].judgement.justification) == 500
    failures = outcomes[1:5]
    assert all(isinstance(f, ItemFailure) for f in failures)
    assert {f.code for f in failures} == {ErrorCode.INVALID_RESPONSE}
    assert all(f.retryable for f in failures)
    assert "no entry for comparison 2" in failures[0].message
    assert "winner must be A or B" in failures[1].message
    assert "2 entries for comparison 4" in failures[2].message
    assert "confidence must be an integer 1..5" in failures[3].message


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("Retry-After", "7", 7.0),
        ("retry-after-ms", "1500", 1.5),
        ("Retry-After", "__date_in_120s__", 120.0),
    ],
)
async def test_429_is_rate_limited_with_retry_after(
    flavour: str, header: str, value: str, expected: float
) -> None:
    if value == "__date_in_120s__":
        value = email.utils.formatdate(time.time() + 120, usegmt=True)
    async with rig(flavour) as r:
        r.server.script(Reply(429, {header: value}, error="Rate limit reached for requests"))
        error = await call_error(r)
    assert error.failure.code == ErrorCode.RATE_LIMITED
    assert error.failure.retryable
    assert error.failure.retry_after == pytest.approx(expected, abs=2.0)
    assert "Rate limit reached for requests" in str(error)


def test_retry_after_parsing_edge_cases() -> None:
    assert parse_retry_after(httpx.Headers({})) is None
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": past})) == 0.0
    # Not a delay at all: infinity once blocked a budget for ever (or overflowed in Redis).
    assert parse_retry_after(httpx.Headers({"Retry-After": "inf"})) is None
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "nan", "Retry-After": "2"})) == 2.0


@pytest.mark.parametrize(("flavour", "status"), [("openai", 500), ("anthropic", 529)])
async def test_server_error_then_success(flavour: str, status: int) -> None:
    async with rig(flavour) as r:
        r.server.script(Reply(status, error="The server had an error"))
        error = await call_error(r)
        outcomes = await compare(r, 2)
    assert error.failure.code == ErrorCode.PROVIDER_UNAVAILABLE
    assert error.failure.retryable
    assert f"HTTP {status}" in str(error)
    assert all(isinstance(o, ItemSuccess) for o in outcomes)
    assert len(r.server.calls) == 2


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    "reply",
    [
        Reply(raw=b"<html>502 Bad Gateway</html>"),
        Reply(content='{"comparisons": [{"index": 1, "winner": "A"'),
        Reply(answer=["not", "an", "object"]),
    ],
    ids=["body-not-json", "answer-not-json", "answer-wrong-shape"],
)
async def test_malformed_answers_fail_every_item_retryably(flavour: str, reply: Reply) -> None:
    async with rig(flavour) as r:
        r.server.script(reply)
        error = await call_error(r, 3)
    assert error.failure.code == ErrorCode.INVALID_RESPONSE
    assert error.failure.retryable
    assert r.provider.circuit_state == CircuitState.CLOSED, "the provider did answer"


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("reply", "billed"),
    [
        (Reply(), True),
        (Reply(answer=["not", "an", "object"]), True),
        (Reply(answer={"comparisons": []}), True),
        (Reply(raw=b"<html>502 Bad Gateway</html>"), False),
        (Reply(status=500, error="server hiccup"), False),
    ],
    ids=["usable", "answer-wrong-shape", "every-item-missing", "body-not-json", "http-500"],
)
async def test_every_answered_call_is_billed_in_the_report_whatever_its_answer(
    flavour: str, reply: Reply, billed: bool
) -> None:
    """The report carries the whole usage of a call the provider answered, once, usable or not
    (the provider billed it); a call it did not answer reports nothing. Would fail if an
    unusable answer's usage were dropped, or a usable one's counted twice."""
    async with rig(flavour) as r:
        r.server.script(reply)
        report = CallReport()
        model = r.settings.default_model
        with contextlib.suppress(ProviderCallError):
            await r.provider.compare(items(3), model=model, overrides=Overrides(), report=report)
    expected = TokenUsage(1003, 250) if billed else TokenUsage()
    assert report.billed == expected
    price = r.settings.prices.cost(model, expected, rule=r.provider.cache_rule)
    assert report.cost_usd == pytest.approx(price, rel=1e-12)
    assert (report.cost_usd > 0) is billed


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_a_call_past_the_timeout_is_a_timeout(flavour: str) -> None:
    async with rig(flavour, timeout_s=0.3) as r:
        r.server.script(Reply(hang=True))
        started = time.monotonic()
        error = await call_error(r)
    assert error.failure.code == ErrorCode.TIMEOUT
    assert error.failure.retryable
    assert "no answer within 0.3s" in str(error)
    assert time.monotonic() - started < 3.0


async def test_an_unreachable_provider_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with rig("openai", base_url=f"http://127.0.0.1:{port}/v1") as r:
        error = await call_error(r)
    assert error.failure.code == ErrorCode.PROVIDER_UNAVAILABLE
    assert "ConnectError" in str(error)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_client_errors_are_not_retried_and_carry_the_providers_message(flavour: str) -> None:
    async with rig(flavour) as r:
        r.server.script(Reply(400, error="prompt is too long: 250000 tokens > 200000 maximum"))
        error = await call_error(r)
    assert error.failure.code == ErrorCode.PROVIDER_ERROR
    assert not error.failure.retryable
    assert "prompt is too long" in str(error)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_circuit_opens_after_k_failures_and_closes_after_cooldown(flavour: str) -> None:
    async with rig(flavour, breaker_threshold=2, breaker_cooldown_s=30.0) as r:
        r.server.script(Reply(503), Reply(503))
        await call_error(r)
        assert r.provider.circuit_state == CircuitState.CLOSED
        await call_error(r)
        assert r.provider.circuit_state == CircuitState.OPEN

        r.clock.now += 10
        fast = await call_error(r)
        assert len(r.server.calls) == 2, "an open circuit fails without an HTTP call"
        assert fast.failure.code == ErrorCode.PROVIDER_UNAVAILABLE
        assert str(fast) == (
            f"circuit open for provider {ProviderName(r.provider.name).value} after 2 "
            "consecutive failures; retrying after 20s"
        )
        assert fast.failure.retry_after == pytest.approx(20.0)

        r.clock.now += 20
        assert r.provider.circuit_state == CircuitState.HALF_OPEN
        outcomes = await compare(r, 2)
        assert all(isinstance(o, ItemSuccess) for o in outcomes)
        assert len(r.server.calls) == 3
    assert r.transitions == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]


async def test_a_failed_trial_call_reopens_the_circuit() -> None:
    async with rig("openai", breaker_threshold=1, breaker_cooldown_s=5.0, timeout_s=0.2) as r:
        r.server.script(Reply(503), Reply(hang=True))
        await call_error(r)
        r.clock.now += 5
        trial = await call_error(r)
        assert trial.failure.code == ErrorCode.TIMEOUT
        assert r.provider.circuit_state == CircuitState.OPEN
        assert "after 2 consecutive failures" in str(await call_error(r))
    assert r.transitions == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.OPEN]


async def test_rate_limits_and_rejections_do_not_open_the_circuit() -> None:
    async with rig("anthropic", breaker_threshold=1) as r:
        r.server.script(Reply(429), Reply(400), Reply(401))
        for _ in range(3):
            await call_error(r)
        assert r.provider.circuit_state == CircuitState.CLOSED
    assert r.transitions == []


async def _half_open(breaker: CircuitBreaker, clock: FakeClock, cooldown_s: float = 1.0) -> None:
    with pytest.raises(ProviderCallError):
        async with breaker.guard():
            raise ProviderCallError(ErrorCode.TIMEOUT, "down")
    clock.now += cooldown_s
    assert breaker.state == CircuitState.HALF_OPEN


async def _let_tasks_run() -> None:
    for _ in range(10):  # yields to the event loop, no timing: each waiter reaches its wait
        await asyncio.sleep(0)


@pytest.mark.parametrize("trial_succeeds", [True, False])
async def test_calls_during_a_half_open_trial_wait_for_its_outcome(trial_succeeds: bool) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(ProviderName.OPENAI, threshold=1, cooldown_s=1.0, clock=clock)
    await _half_open(breaker, clock)
    trial_may_end = asyncio.Event()
    entered: list[str] = []

    async def call(name: str) -> str:
        async with breaker.guard():
            entered.append(name)
            if name == "trial":
                await trial_may_end.wait()
                if not trial_succeeds:
                    raise ProviderCallError(ErrorCode.PROVIDER_UNAVAILABLE, "still down")
        return name

    trial = asyncio.create_task(call("trial"))
    others = [asyncio.create_task(call(f"call-{i}")) for i in range(3)]
    await _let_tasks_run()
    assert entered == ["trial"], "one trial at a time; the others wait instead of failing"
    assert not any(t.done() for t in others)
    trial_may_end.set()
    outcomes = await asyncio.gather(trial, *others, return_exceptions=True)
    if trial_succeeds:
        assert outcomes == ["trial", "call-0", "call-1", "call-2"]
        assert breaker.state == CircuitState.CLOSED
    else:
        assert [str(o) for o in outcomes[:1]] == ["still down"]
        for waited in outcomes[1:]:
            assert isinstance(waited, ProviderCallError)
            assert "circuit open" in str(waited)
            assert waited.failure.retry_after == pytest.approx(1.0)
        assert breaker.state == CircuitState.OPEN


async def test_a_cancelled_trial_hands_the_trial_to_one_waiter() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(ProviderName.OPENAI, threshold=1, cooldown_s=1.0, clock=clock)
    await _half_open(breaker, clock)
    hold = asyncio.Event()
    entered: list[str] = []

    async def call(name: str) -> None:
        async with breaker.guard():
            entered.append(name)
            await hold.wait()

    trial = asyncio.create_task(call("trial"))
    waiters = [asyncio.create_task(call(f"w{i}")) for i in range(2)]
    await _let_tasks_run()
    trial.cancel()
    await _let_tasks_run()
    assert entered == ["trial", "w0"], "the first waiter becomes the next trial, alone"
    hold.set()
    await asyncio.gather(*waiters)
    assert entered == ["trial", "w0", "w1"]


async def test_a_trial_that_outlasts_the_wait_fails_the_waiter_with_a_retry_after() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        ProviderName.OPENAI, threshold=1, cooldown_s=2.0, clock=clock, trial_wait_s=0.05
    )
    await _half_open(breaker, clock, cooldown_s=2.0)
    never = asyncio.Event()

    async def stuck_trial() -> None:
        async with breaker.guard():
            await never.wait()

    trial = asyncio.create_task(stuck_trial())
    await _let_tasks_run()
    with pytest.raises(ProviderCallError, match=r"outlasted 0\.05s") as info:
        async with breaker.guard():
            pass
    assert info.value.failure.retry_after == 2.0
    trial.cancel()


async def test_four_calls_at_a_half_open_provider_all_succeed_behind_one_trial() -> None:
    async with rig("openai", breaker_threshold=1, breaker_cooldown_s=5.0) as r:
        r.server.script(Reply(503))
        await call_error(r)
        r.clock.now += 5
        r.server.latency_s = 0.2  # the trial is in flight while the others arrive
        outcomes = await asyncio.gather(*(compare(r, 1) for _ in range(4)))
    assert all(isinstance(o, ItemSuccess) for batch in outcomes for o in batch)
    trial, *rest = r.server.calls[1:]
    assert len(rest) == 3
    assert all(call.received_at >= trial.received_at + 0.2 for call in rest), "after the trial"
    assert r.transitions == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_sequential_mode_makes_one_call_per_item(flavour: str) -> None:
    async with rig(flavour, bundle_calls=BundleCalls.SEQUENTIAL) as r:
        outcomes = await compare(r, 3)
    assert r.server.problems == []
    assert [c.comparisons for c in r.server.calls] == [1, 1, 1]
    assert all(isinstance(o, ItemSuccess) for o in outcomes)
    assert [o.usage.prompt_tokens for o in outcomes] == [1003] * 3


async def test_sequential_mode_stops_calling_once_rate_limited() -> None:
    async with rig("openai", bundle_calls=BundleCalls.SEQUENTIAL) as r:
        r.server.script(Reply(), Reply(429, {"Retry-After": "3"}))
        outcomes = await compare(r, 4)
    assert len(r.server.calls) == 2
    assert isinstance(outcomes[0], ItemSuccess)
    assert [o.code for o in outcomes[1:]] == [ErrorCode.RATE_LIMITED] * 3
    assert outcomes[3].retry_after == 3.0


async def test_a_keyless_compatible_server_gets_no_authorization_header() -> None:
    async with rig(
        "openai", server_key=None, provider=ProviderName.OPENAI_COMPATIBLE, api_key=Secret()
    ) as r:
        outcomes = await compare(r, 2)
    assert r.server.problems == []
    assert all(isinstance(o, ItemSuccess) for o in outcomes)
    assert "max_tokens" in r.server.calls[0].body, "compatible servers get max_tokens"


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_the_api_key_appears_nowhere(flavour: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with rig(flavour) as r:
        seen += [repr(r.provider), repr(r.settings), str(r.settings), str(r.settings.api_key)]
        seen += [repr(await compare(r, 2))]
        r.server.script(Reply(500), Reply(429), Reply(raw=b"nope"))
        for _ in range(3):
            seen += [repr((await call_error(r)).failure)]
        assert all(SECRET in str(call.headers) for call in r.server.calls), "the key was sent"
    async with rig(flavour, server_key="sk-other-key", timeout_s=0.3) as r:
        rejected = await call_error(r)
        assert "[redacted]" in str(rejected) or "invalid x-api-key" in str(rejected)
        r.server.script(Reply(hang=True))
        seen += [repr(rejected.failure), str(rejected), repr(await call_error(r))]
    seen += [caplog.text]
    seen += [repr(vars(record)) for record in caplog.records]
    assert caplog.records, "the calls were logged"
    assert not [text for text in seen if SECRET in text]
