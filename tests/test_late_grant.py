"""A call held up between its rate-budget grant and its send (a frozen process, a stalled queue)
is granted afresh before it goes: its old grant may have left the shared budget's window while
the provider has not seen the call, and someone else may have filled that window meanwhile.

Real parts: the in-process processor on a real local queue whose `called` mark is held up once
(as a SIGSTOP between grant and call would), the in-process budget store shared with the test
(standing in for a second replica), and the fake OpenAI server limiting one request per rolling
second, the way providers count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from cj_client.transport import submission_to_pb
from lps_server.budgets.local import LocalBudgetStore
from lps_server.core.config import Settings
from lps_server.core.domain import ProcessingMode
from lps_server.core.rates import RateCounts
from lps_server.edge.convert import request_from_pb
from lps_server.observability.metrics import LpsMetrics
from lps_server.processing.intake import Intake
from lps_server.processing.processor import Processor
from lps_server.providers import ProviderRegistry
from lps_server.queue.local import LocalQueue
from tests.economy_rig import comparisons, provider_env
from tests.fake_llm_servers import FakeOpenAI
from tests.fake_rate_limits import FakeEconomy, RollingLimits

WINDOW_S = 1.0
HELD_S = 1.5  # longer than a grant counts (1.11 s): the budget forgets it meanwhile
MODEL = "judge-model"


class HeldMark:
    """A real LocalQueue whose first `called` mark is held up for HELD_S."""

    def __init__(self, inner: LocalQueue) -> None:
        self._inner = inner
        self.held = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def extend(self, request_ids: Sequence[str], **kwargs: Any) -> list[str]:
        if kwargs.get("calling") and not self.held.is_set():
            self.held.set()
            await asyncio.sleep(HELD_S)
        return await self._inner.extend(request_ids, **kwargs)


async def test_a_call_held_up_after_its_grant_is_granted_again_before_it_goes() -> None:
    """While the call is held, its grant leaves the budget and another client takes the window
    (a grant from the same store, a call the provider counts). Sent on its old grant, the call
    was refused (429); granted afresh, it waits until the window has room and is admitted."""
    limits = RollingLimits(window_s=WINDOW_S, requests=1)
    async with FakeOpenAI(api_key="sk-economy", economy=FakeEconomy(limits=limits)) as server:
        env = provider_env(
            server,
            "openai",
            model=MODEL,
            rate_limit_window_seconds=WINDOW_S,
            requests_per_minute=1,
        )
        settings = Settings(
            queue_sweep_interval_seconds=3600.0,
            queue_processing_mode=ProcessingMode.PER_REQUEST,
            retry_backoff_ms=10,
        )
        providers = ProviderRegistry.from_settings(settings, env=env)
        inner = LocalQueue()
        queue = HeldMark(inner)
        budgets = LocalBudgetStore()
        processor = Processor(
            queue=queue,  # type: ignore[arg-type]
            providers=providers,
            settings=settings,
            metrics=LpsMetrics(CollectorRegistry()),
            budgets=budgets,
        )
        intake = Intake(queue=inner, providers=providers, settings=settings)
        (sub,) = [
            replace(s, result_channel="c") for s in comparisons(1, provider="openai", model=MODEL)
        ]
        await intake.submit(
            [intake.prepare(request_from_pb(submission_to_pb(sub), request_id=sub.request_id))]
        )
        running = asyncio.create_task(processor.run())
        try:
            async with asyncio.timeout(20):
                await queue.held.wait()  # granted, and now held before its call
                await asyncio.sleep(HELD_S - 0.3)  # its grant has left the budget's window
                other = await budgets.acquire(
                    f"openai:{MODEL}",
                    need=RateCounts(requests=1),
                    limits=RateCounts(requests=1),
                    window_s=WINDOW_S,
                )
                assert other.grant is not None, "the held call's grant was forgotten"
                limits.admit({"requests": 1}, time.time())  # the other client's call arrives
                entries = []
                while not entries:
                    entries = await inner.read_channel("c", cursor="", timeout=5)
        finally:
            processor.stop()
            await running
            await providers.aclose()
    assert [e.result.status.value for e in entries] == ["completed"]
    assert limits.refused == 0  # sent on its old grant: one 429
    assert len(server.calls) == 1
