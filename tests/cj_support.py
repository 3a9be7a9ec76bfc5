"""Shared parts of the `cj` run tests: a provider that counts what it was asked, an LPS around it,
and `cj` as a real process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from lps_server.app import LpsApp
from lps_server.core.config import Settings
from lps_server.core.domain import Overrides
from lps_server.providers import ComparisonItem, ItemOutcome, ProviderRegistry
from tests.bundling_support import RecordingProvider

ROOT = Path(__file__).resolve().parent.parent
ESSAYS = ROOT / "examples" / "essays"
CJ_WAIT_S = 60.0


class CountingProvider(RecordingProvider):
    """The recording mock provider; `reached(n)` is an event set once `n` items were asked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._waiting: list[tuple[int, asyncio.Event]] = []

    def reached(self, items: int) -> asyncio.Event:
        """An event set once the provider has been asked `items` comparisons in all."""
        event = asyncio.Event()
        self._waiting.append((items, event))
        self._wake()
        return event

    @property
    def asked(self) -> Counter[str]:
        """How often the provider was asked each request id."""
        return Counter(key for call in self.calls for key in call)

    async def compare(
        self, items: Sequence[ComparisonItem], *, model: str, overrides: Overrides
    ) -> list[ItemOutcome]:
        outcomes = await super().compare(items, model=model, overrides=overrides)
        self._wake()
        return outcomes

    def _wake(self) -> None:
        total = sum(self.asked.values())
        for items, event in self._waiting:
            if total >= items:
                event.set()


@asynccontextmanager
async def serving(provider: RecordingProvider, **settings: Any) -> AsyncIterator[LpsApp]:
    """An LPS on a free port whose only provider is `provider`."""
    config = Settings.from_env({}, grpc_host="127.0.0.1", grpc_port=0, metrics_port=0, **settings)
    app = LpsApp(config, providers=ProviderRegistry([provider]))
    await app.start(serve_metrics=False)
    try:
        yield app
    finally:
        await app.stop(grace=5)


def target(app: LpsApp) -> str:
    return f"127.0.0.1:{app.grpc_port}"


async def start_cj(*args: str) -> asyncio.subprocess.Process:
    """`cj` as its own process (so that it can be interrupted), output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cj_client.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Wait for a `cj` process: (exit code, stdout, stderr)."""
    out, err = await asyncio.wait_for(proc.communicate(), CJ_WAIT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_cj(*args: str) -> tuple[int, str, str]:
    """Run `cj` to its end."""
    return await finish(await start_cj(*args))
