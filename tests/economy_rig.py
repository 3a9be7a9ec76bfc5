"""Replicas in this process calling a fake provider that counts, caches and rate-limits like the
real ones (`tests/fake_rate_limits.py`), for the budget, header and caching tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from cj_client import Ack, ComparisonOutcome, ComparisonSubmission, EssayInput, LpsClient
from lps_server.app import LpsApp
from lps_server.budgets import BudgetStore
from lps_server.core.config import Settings
from lps_server.providers import ProviderRegistry
from tests.fake_llm_servers import FakeLlmServer

KEY = "sk-economy"
# CJ-like essays: a few hundred characters of distinct text each.
ESSAY = (
    "Starting school later lets teenagers sleep closer to their natural rhythm. Studies of "
    "districts that moved the first bell report better attendance and fewer accidents, while "
    "the costs of new bus schedules fall mostly on the first year. Essay number {i}."
)


def provider_env(server: FakeLlmServer, flavour: str, **extra: object) -> dict[str, str]:
    """The LPS_<P>_* variables that point a provider at `server`."""
    prefix = "LPS_OPENAI_" if flavour == "openai" else "LPS_ANTHROPIC_"
    env = {prefix + "API_KEY": KEY, prefix + "BASE_URL": server.base_url}
    env.update({prefix + k.upper(): str(v) for k, v in extra.items()})
    return env


def comparisons(
    n: int,
    *,
    provider: str,
    tag: str = "c",
    instructions: str = "Which essay argues better?",
    model: str = "",
) -> list[ComparisonSubmission]:
    """`n` comparisons of distinct essays for `provider`."""
    return [
        ComparisonSubmission(
            essay_a=EssayInput(f"a{i}", ESSAY.format(i=f"{tag}-a-{i}")),
            essay_b=EssayInput(f"b{i}", ESSAY.format(i=f"{tag}-b-{i}") + " It adds evidence."),
            request_id=f"{tag}-{i}",
            instructions=instructions,
            provider=provider,
            model=model,
        )
        for i in range(n)
    ]


@asynccontextmanager
async def replicas(
    count: int,
    *,
    env: dict[str, str],
    budgets: Callable[[], BudgetStore] | None = None,
    grace: float = 5.0,
    **settings: Any,
) -> AsyncIterator[list[LpsApp]]:
    """`count` started replicas (each its own registry) with the providers `env` configures;
    with `budgets`, each its own budget store built by it (else the one settings choose); each
    is stopped with `grace` seconds to drain."""
    async with AsyncExitStack() as stack:
        apps = []
        for _ in range(count):
            config = Settings.from_env(
                {}, grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, **settings
            )
            app = LpsApp(
                config,
                registry=CollectorRegistry(),
                providers=ProviderRegistry.from_settings(config, env=env),
                budgets=budgets() if budgets is not None else None,
            )
            await app.start(serve_metrics=False)
            stack.push_async_callback(app.stop, grace)
            apps.append(app)
        yield apps


async def run_all(
    apps: Sequence[LpsApp], subs: list[ComparisonSubmission], *, timeout: float = 30.0
) -> list[ComparisonOutcome]:
    """Submit `subs` spread over the replicas, one stream each; every result."""

    async def one(app: LpsApp, part: list[ComparisonSubmission]) -> list[ComparisonOutcome]:
        out = []
        async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=timeout) as client:
            async for event in client.submit_many(part):
                if isinstance(event, Ack):
                    assert event.accepted, event
                else:
                    out.append(event)
        return out

    parts = [subs[i :: len(apps)] for i in range(len(apps))]
    async with asyncio.timeout(timeout):
        results = await asyncio.gather(*(one(a, p) for a, p in zip(apps, parts, strict=True)))
    return [r for part in results for r in part]
