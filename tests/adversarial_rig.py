"""Parts for the adversarial budget tests (`tests/test_adversarial_budgets.py`): fake providers
that keep a ledger of what they billed and refused, per request id, and can limit each model on
its own as the vendors do; comparisons that carry their id; checks on what the client saw.

* `Ledger` (mixed into `LedgerOpenAI` and `LedgerAnthropic`) records every response's status
  (`refused`: how many 429s the provider sent, by its limits or by a script), the usage each
  answered call reported (`usages`) and which request ids each billed call carried (`billed`).
  Essay A carries its request id (`item_marker`), so a duplicate provider call shows as an id
  billed twice. A Ledger needs an `economy` (`FakeEconomy()` without limits counts and caches
  only); `economies` gives a model its own (its own rolling limits, headers and 429s).
* `marked` builds comparisons whose essays carry their request id.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from cj_client import Ack, ComparisonOutcome, ComparisonSubmission, EssayInput, LpsClient
from lps_server.app import LpsApp
from tests.economy_rig import ESSAY
from tests.fake_llm_servers import _ITEM, FakeAnthropic, FakeLlmServer, FakeOpenAI, item_marker
from tests.fake_rate_limits import FakeEconomy, fake_tokens, retry_after_headers
from tests.helpers import metric


class Ledger(FakeLlmServer):
    """A fake server that books what it billed (answered 200) and what it refused (429)."""

    def __init__(self, *, economies: Mapping[str, FakeEconomy] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.economies = dict(economies or {})
        self.statuses: Counter[int] = Counter()
        self.usages: list[dict[str, Any]] = []
        self.billed: Counter[str] = Counter()
        self.billed_models: Counter[str] = Counter()
        self.refused_items: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        return self

    def calls_reach(self, n: int) -> Callable[[], bool]:
        """A predicate for `wait_until`: the server has received `n` calls."""
        return lambda: len(self.calls) >= n

    def economy_of(self, model: str) -> FakeEconomy:
        """The economy that counts calls to `model`."""
        economy = self.economies.get(model, self.economy)
        assert economy is not None, "a Ledger needs an economy"
        return economy

    @property
    def refused(self) -> int:
        """429s sent."""
        return self.statuses[429]

    def duplicates(self) -> Counter[str]:
        """Request ids billed more than once (money spent twice)."""
        return Counter({rid: n for rid, n in self.billed.items() if n > 1})

    async def _respond(
        self, writer: asyncio.StreamWriter, status: int, payload: bytes, extra: dict[str, str]
    ) -> None:
        self.statuses[status] += 1
        await super()._respond(writer, status, payload, extra)

    def _admit(self, body: object) -> tuple[Any, dict[str, str]]:
        # The base class's, with the economy of the call's model and the ledger's entries.
        body = body if isinstance(body, dict) else {}
        model = str(body.get("model", ""))
        economy = self.economy_of(model)
        items = _ITEM.findall(self._prompt(body))
        now = time.time()
        prompt = economy.prompt(self.flavour, body)
        if economy.limits is None:
            return (None, prompt, model, items), {}
        charge, wait = economy.limits.admit(economy.charge(self.flavour, body, prompt), now)
        if charge is None:
            self.refused_items.update(items)
            headers = {
                **retry_after_headers(self.flavour, wait),
                **economy.headers(self.flavour, now),
            }
            return None, headers
        return (charge, prompt, model, items), {}

    def _finish(
        self, admitted: tuple[Any, dict[str, str]], answer: object, content: str | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        (charge, (total, read, written), model, items), _ = admitted
        output = fake_tokens(content if content is not None else json.dumps(answer))
        if charge is not None and "output_tokens" in charge.counts:
            charge.counts["output_tokens"] = output  # Anthropic counts what was produced
        usage = self._usage(total, read, written, output)
        self.usages.append(usage)
        self.billed.update(items)
        self.billed_models[model] += 1
        return usage, self.economy_of(model).headers(self.flavour, time.time())


class LedgerOpenAI(Ledger, FakeOpenAI):
    """The fake OpenAI server, with a ledger and per-model limits."""


class LedgerAnthropic(Ledger, FakeAnthropic):
    """The fake Anthropic server, with a ledger and per-model limits."""


def marked(
    n: int, *, provider: str, tag: str = "c", model: str = "", instructions: str = ""
) -> list[ComparisonSubmission]:
    """`n` comparisons of distinct CJ-like essays for `provider`, ids `<tag>-<i>`, essay A marked
    with its id."""
    return [
        ComparisonSubmission(
            essay_a=EssayInput(f"a{i}", f"{item_marker(f'{tag}-{i}')} {ESSAY.format(i=i)}"),
            essay_b=EssayInput(f"b{i}", ESSAY.format(i=f"{tag}-b-{i}") + " It adds evidence."),
            request_id=f"{tag}-{i}",
            instructions=instructions or "Which essay argues better?",
            provider=provider,
            model=model,
        )
        for i in range(n)
    ]


def once_each(results: Sequence[ComparisonOutcome], subs: Sequence[ComparisonSubmission]) -> None:
    """Every submission got exactly one result."""
    counts = Counter(r.request_id for r in results)
    assert set(counts) == {s.request_id for s in subs}
    assert set(counts.values()) == {1}, counts.most_common(3)


def statuses(results: Sequence[ComparisonOutcome]) -> Counter[str]:
    """How many results ended in each status."""
    return Counter(r.status for r in results)


def rate_limited(apps: Sequence[LpsApp]) -> float:
    """`llm_provider_rate_limited_total` summed over replicas."""
    return sum(metric(a.registry, "llm_provider_rate_limited_total") for a in apps)


def tokens_counted(app: LpsApp) -> dict[str, int]:
    """`llm_provider_tokens_used_total` by kind (zeros left out)."""
    kinds = ("input", "output", "cache_read", "cache_write")
    got = {k: int(metric(app.registry, "llm_provider_tokens_used_total", type=k)) for k in kinds}
    return {k: v for k, v in got.items() if v}


def usage_reported(flavour: str, usages: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The tokens a provider reported, by LPS's kinds (input: the uncached prompt; zeros left
    out)."""
    totals: Counter[str] = Counter()
    for u in usages:
        if flavour == "anthropic":
            totals["input"] += u["input_tokens"]
            totals["cache_write"] += u["cache_creation_input_tokens"]
            totals["cache_read"] += u["cache_read_input_tokens"]
            totals["output"] += u["output_tokens"]
        else:
            cached = u["prompt_tokens_details"]["cached_tokens"]
            totals["input"] += u["prompt_tokens"] - cached
            totals["cache_read"] += cached
            totals["output"] += u["completion_tokens"]
    return {k: v for k, v in totals.items() if v}


async def results_for(
    app: LpsApp, subs: Sequence[ComparisonSubmission], want: set[str], *, timeout: float
) -> dict[str, ComparisonOutcome]:
    """Submit `subs` on one stream and read results until those of `want` are in (within
    `timeout`); the others may still be waiting."""
    got: dict[str, ComparisonOutcome] = {}
    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=timeout) as client:
        async with asyncio.timeout(timeout):
            async for event in client.submit_many(list(subs)):
                if isinstance(event, Ack):
                    assert event.accepted, event
                    continue
                got[event.request_id] = event
                if want <= set(got):
                    break
    return got
