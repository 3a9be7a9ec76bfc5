"""End to end with a real Prometheus and Pushgateway: LPS scraped every second, the shipped rules
loaded, a workload whose first burst is expiries, with failures, unary and streamed calls and a
`cj assess` run that pushes to the gateway. Then every dashboard expression returns data, the
expiry alert fires, and increase() of the expiry, request and CJ counters is what the workload did.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cj_client import Ack, ComparisonOutcome, LpsClient
from cj_client.cli import main as cj_main
from lps_server.app import LpsApp
from lps_server.core.domain import ProcessingMode
from lps_server.providers.http_settings import HttpProvidersSettings
from lps_server.providers.openai_compat import OpenAICompatibleProvider
from tests.helpers import GatedMock, eventually, metric, running_app, submission
from tests.prometheus_rig import PrometheusProcess, PushgatewayProcess
from tests.redis_server import free_port
from tests.test_docs import promql_in

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "lps.rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "lps.json"
ESSAYS = ROOT / "examples" / "essays"
DEADLINE_S = 30.0
EXPIRING = 12
T = TypeVar("T")


class E2E:
    """The parts under test: LPS, its provider gate, the Pushgateway and Prometheus."""

    def __init__(
        self, app: LpsApp, provider: GatedMock, gateway: PushgatewayProcess, prom: PrometheusProcess
    ) -> None:
        self.app, self.provider, self.gateway, self.prom = app, provider, gateway, prom

    async def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query, off the event loop (LPS serves its scrapes from this loop)."""
        return await asyncio.to_thread(self.prom.query, expr, at=at)

    async def until(self, what: str, check: Callable[[], Any]) -> Any:
        """Run a (blocking) check off the loop until it returns a truthy value, with a deadline."""
        try:
            async with asyncio.timeout(DEADLINE_S):
                while True:
                    found = await asyncio.to_thread(check)
                    if found:
                        return found
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def exact_increase(self, expr_of: Callable[[str], str], probe: str) -> float:
        """increase() evaluated at the latest scrape of `probe`'s target, over a window holding
        every sample since the target's first scrape (whose counters were 0): no extrapolation."""
        (stamp,) = await self.query(f"max(timestamp({probe}))")
        at = float(stamp["value"][1])
        result = await self.query(expr_of("15m"), at=at)
        return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture
async def e2e() -> AsyncIterator[E2E]:
    """A serial-bundle LPS (the gated mock with 20% injected errors, and an OpenAI-compatible
    provider nobody calls, for the circuit gauge), a Pushgateway, and a Prometheus scraping both
    every second with the shipped rules."""
    gateway = PushgatewayProcess()
    gateway.start()
    provider = GatedMock(error_rate=0.2, rng=random.Random(7))
    http = HttpProvidersSettings.from_env(
        {
            "LPS_OPENAI_COMPATIBLE_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
            "LPS_OPENAI_COMPATIBLE_MODEL": "local-model",
        }
    ).configured()
    try:
        async with running_app(
            provider=provider,
            also=[OpenAICompatibleProvider(h) for h in http],
            serve_metrics=True,
            queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
            max_concurrent_calls=1,
            queue_max_retries=1,
            retry_backoff_ms=1,
            queue_sweep_interval_seconds=0.2,
        ) as app:
            prom = PrometheusProcess(
                {"lps": [f"127.0.0.1:{app.metrics_port}"], "pushgateway": [gateway.url[7:]]},
                rule_files=[RULES],
                honor_labels=["pushgateway"],
            )
            try:
                await asyncio.to_thread(prom.start)
                yield E2E(app, provider, gateway, prom)
            finally:
                await asyncio.to_thread(prom.close)
    finally:
        await asyncio.to_thread(gateway.close)


def dashboard_exprs() -> list[str]:
    """Every dashboard query, with Grafana's variables given values that cover the test."""
    panels = json.loads(DASHBOARD.read_text("utf-8"))["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    return [e.replace("$__rate_interval", "5m").replace("$__range", "15m") for e in exprs]


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(r["value"][1])) for r in result)


async def stream(client: LpsClient, subs: list[Any]) -> tuple[list[Ack], list[ComparisonOutcome]]:
    acks, results = [], []
    async with asyncio.timeout(DEADLINE_S):
        async for event in client.submit_many(subs):
            (acks if isinstance(event, Ack) else results).append(event)
    return acks, results


async def test_prometheus_sees_what_the_workload_did(e2e: E2E, tmp_path: Path) -> None:
    app, provider = e2e.app, e2e.provider
    # Prometheus has scraped LPS (every counter at 0) and the empty gateway before any work.
    await e2e.until("both targets up", e2e.prom.targets_up)
    await e2e.until("LPS's zero series", lambda: e2e.prom.query("llm_provider_queue_expiry_total"))
    outcomes: list[ComparisonOutcome] = []
    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
        # First burst: the provider holds its only call slot, so a burst of short-lived requests
        # waits in the queue (nothing is leased for a provider without room) and expires there.
        provider.gate.clear()
        await client.submit(submission(0, result_channel="blocker"))
        async with asyncio.timeout(DEADLINE_S):
            await provider.entered.wait()
        burst = [submission(100 + i, ttl_seconds=0.2) for i in range(EXPIRING)]
        expiring = asyncio.create_task(stream(client, burst))
        await eventually(
            lambda: metric(app.registry, "llm_provider_queue_expiry_total") == EXPIRING,
            "the burst to expire",
            timeout=DEADLINE_S,
        )
        provider.gate.set()
        _, expired = await expiring
        assert {r.status for r in expired} == {"expired"}
        # Failures (20% injected errors), a stream with refused requests, and unary calls.
        subs = [submission(i) for i in range(1, 41)] + [submission(41, priority=42)]
        acks, streamed = await stream(client, subs)
        assert Counter(a.accepted for a in acks) == {True: 40, False: 1}
        outcomes += streamed
        for i in range(50, 55):
            await client.submit(submission(i, result_channel="unary"))
        async with asyncio.timeout(DEADLINE_S):
            for channel, count in (("blocker", 1), ("unary", 5)):
                async for _, outcome in client.stream_results(channel):
                    outcomes.append(outcome)
                    count -= 1
                    if count == 0:
                        break
        assert len(outcomes) == 46
        await client.get("req-50")
        await client.queue_stats()
    statuses = Counter(o.status for o in outcomes)
    assert statuses["failed"] > 0, "error injection was meant to fail some requests"

    # A CJ run pushes to the gateway; its first wave waits until Prometheus has scraped the run's
    # start push (its counters at 0), as any run longer than a scrape interval is seen.
    provider.gate.clear()
    argv = ["assess", str(ESSAYS), "--out", str(tmp_path / "cj"), "--quiet", "--budget", "24"]
    argv += ["--mode", "serial_bundle", "--target", f"127.0.0.1:{app.grpc_port}"]
    argv += ["--pushgateway", e2e.gateway.url]
    run = asyncio.create_task(asyncio.to_thread(cj_main, argv))
    await e2e.until(
        "the run's start push", lambda: e2e.prom.query('cj_llm_requests_total{job="cj_assess"}')
    )
    provider.gate.set()
    async with asyncio.timeout(DEADLINE_S):
        assert await run == 0
    cj = json.loads((tmp_path / "cj" / "summary.json").read_text())
    assert cj["comparisons_requested"] > 0

    # Prometheus has the final values: LPS's and the run's last push.
    processed = len(outcomes) + cj["comparisons_completed"] + cj["comparisons_failed"]
    await e2e.until(
        "LPS's final counts",
        lambda: e2e.prom.query(f"sum(llm_provider_requests_total) == {processed}"),
    )
    await e2e.until(
        "the run's final push",
        lambda: e2e.prom.query(f"sum(cj_llm_requests_total) == {cj['comparisons_requested']}"),
    )

    # The runbook's "expiries > 0" alert fired on the first burst.
    await e2e.until(
        "LpsRequestsExpired to fire",
        lambda: e2e.prom.query('ALERTS{alertname="LpsRequestsExpired",alertstate="firing"}'),
    )
    # Every dashboard expression returns data (recording rules included).
    exprs = dashboard_exprs()
    empty: list[str] = []

    def all_have_data() -> bool:
        empty[:] = [e for e in exprs if not has_data(e2e.prom.query(e))]
        return not empty

    try:
        await e2e.until("every dashboard expression to return data", all_have_data)
    except AssertionError:
        raise AssertionError(f"dashboard expressions without data: {empty}") from None

    # Every query of the runbook and docs/observability.md runs as pasted; all but the alert
    # conditions (which hold only when something is wrong) return data.
    docs = [q for d in ("runbook.md", "observability.md") for q in promql_in(ROOT / "docs" / d)]
    assert len(docs) > 30
    for query in docs:
        result = await e2e.query(query)
        if not re.search(r"[<>]|==| and ", query):
            assert has_data(result), query

    # increase() is exactly what happened.
    lps = "llm_provider_requests_total"
    assert (
        await e2e.exact_increase(
            lambda w: f"sum(increase(llm_provider_queue_expiry_total[{w}]))", lps
        )
        == EXPIRING
    )
    for status in ("completed", "failed"):
        expected = statuses[status] + cj[f"comparisons_{status}"]
        found = await e2e.exact_increase(
            lambda w, s=status: f'sum(increase(llm_provider_requests_total{{status="{s}"}}[{w}]))',
            lps,
        )
        assert found == expected, status
    rejected = await e2e.exact_increase(
        lambda w: f"sum(increase(llm_provider_submissions_rejected_total[{w}]))", lps
    )
    assert rejected == 1
    cj_probe = 'cj_llm_requests_total{job="cj_assess"}'
    requested = await e2e.exact_increase(
        lambda w: f"sum(increase(cj_llm_requests_total[{w}]))", cj_probe
    )
    assert requested == cj["comparisons_requested"]
    batches = await e2e.query('sum(cj_llm_batches_started_total{batching_mode="serial_bundle"})')
    assert float(batches[0]["value"][1]) == 1
    started = await e2e.exact_increase(
        lambda w: f"sum(increase(cj_llm_batches_started_total[{w}]))", cj_probe
    )
    assert started == 1
    (group,) = await e2e.query(cj_probe.replace("}", ',batching_mode="serial_bundle"}'))
    assert re.fullmatch(rf"{cj['cj_batch_id']}-[0-9a-f]{{8}}", group["metric"]["instance"])
