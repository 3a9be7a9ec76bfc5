"""The fault suite's parts: `lps serve` replicas as real processes on a private redis-server,
calling a real HTTP provider (OpenAI's wire format) that is a fake server in the test's own event
loop, which counts what each replica asked it for, per request id.

Each replica presents its own API key, so the fake server tells which replica asked for what.
Requests carry their id in essay A's text (`item_marker`), so the fake server counts provider
items per request id: a duplicate provider call shows as an id asked for twice.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cj_client import Ack, ComparisonOutcome, ComparisonSubmission, EssayInput, LpsClient
from tests.fake_llm_servers import FakeOpenAI, item_marker
from tests.helpers import POOR, RICH

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"lps listening grpc=127\.0\.0\.1:(\d+) metrics=127\.0\.0\.1:(\d+)")


class Replica:
    """One `lps serve` process on Redis `redis_url`, calling the fake OpenAI server `provider`
    with `api_key`; its log goes to a file (a full pipe could stall it)."""

    def __init__(
        self,
        name: str,
        *,
        redis_url: str,
        provider: FakeOpenAI,
        log_dir: Path,
        env: dict[str, str],
        api_key: str = "",
    ) -> None:
        self.name = name
        self.api_key = api_key or f"key-{name}"
        self.log_path = log_dir / f"{name}.log"
        full_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LPS_GRPC_HOST": "127.0.0.1",
            "LPS_METRICS_HOST": "127.0.0.1",
            "LPS_QUEUE_BACKEND": "redis",
            "LPS_REDIS_URL": redis_url,
            "LPS_OPENAI_BASE_URL": provider.base_url,
            "LPS_OPENAI_API_KEY": self.api_key,
            **env,
        }
        argv = [sys.executable, "-m", "lps_server.cli", "serve", "--port", "0"]
        with self.log_path.open("w") as out:
            self.proc = subprocess.Popen(
                [*argv, "--metrics-port", "0"],
                stderr=out,
                stdout=subprocess.DEVNULL,
                env=full_env,
                cwd=ROOT,
            )
        self.grpc_port = 0
        self.metrics_port = 0

    async def started(self) -> None:
        """Wait (bounded) for the line that names the bound ports."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (match := _LISTENING.search(self.log())):
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"{self.name} never logged its ports"
            await asyncio.sleep(0.05)  # the process writes its log; nothing to wait on here
        self.grpc_port, self.metrics_port = int(match.group(1)), int(match.group(2))

    @property
    def target(self) -> str:
        """Its gRPC address."""
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        """What it logged so far."""
        return self.log_path.read_text()

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples on its /metrics whose labels include `labels`."""
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def freeze(self) -> None:
        """SIGSTOP: a GC pause, a VM migration, a process stuck on a page fault."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: it goes on as if nothing happened."""
        self.proc.send_signal(signal.SIGCONT)

    async def exit_code(self, timeout: float) -> int:
        """Wait for it to exit."""
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill(self) -> None:
        """SIGKILL, if it still runs (thawed first, so the kill is not held up)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)


@asynccontextmanager
async def replicas(
    names: Sequence[str],
    *,
    redis_url: str,
    provider: FakeOpenAI,
    log_dir: Path,
    **env: str,
) -> AsyncIterator[list[Replica]]:
    """Start replicas (each with key `key-<name>`), wait until each is listening, kill them all
    on exit."""
    started = [
        Replica(n, redis_url=redis_url, provider=provider, log_dir=log_dir, env=env) for n in names
    ]
    try:
        await asyncio.gather(*(r.started() for r in started))
        yield started
    finally:
        for replica in started:
            replica.kill()


#: Starts named replicas with settings (`LPS_*=value` keywords), see `replicas`.
Launch = Callable[..., AbstractAsyncContextManager[list[Replica]]]


def launcher(*, redis_url: str, provider: FakeOpenAI, log_dir: Path) -> Launch:
    """`replicas` bound to one Redis, one provider and one log directory."""
    return functools.partial(replicas, redis_url=redis_url, provider=provider, log_dir=log_dir)


def marked(rid: str, i: int = 0, **fields: object) -> ComparisonSubmission:
    """A comparison for the OpenAI provider whose essay A carries its request id, so the fake
    server counts what it was asked for it."""
    values: dict[str, object] = {
        "essay_a": EssayInput(f"a{i}", f"{item_marker(rid)} {POOR} {i}"),
        "essay_b": EssayInput(f"b{i}", f"{RICH} {i}"),
        "request_id": rid,
        "instructions": "Which essay argues better?",
        "provider": "openai",
        **fields,
    }
    return ComparisonSubmission(**values)  # type: ignore[arg-type]


async def results_of(
    client: LpsClient, subs: Sequence[ComparisonSubmission], *, timeout: float
) -> tuple[Counter[str], dict[str, ComparisonOutcome]]:
    """Stream `subs` in one message and read the call to its end (every result, within
    `timeout`): how many results each id got, and the last of each."""
    counts: Counter[str] = Counter()
    outcomes: dict[str, ComparisonOutcome] = {}
    async with asyncio.timeout(timeout), aclosing(client.submit_many(list(subs))) as events:
        async for event in events:
            if isinstance(event, Ack):
                assert event.accepted, event
            else:
                counts[event.request_id] += 1
                outcomes[event.request_id] = event
    return counts, outcomes
