"""The LPS that `cj assess` runs in its own process when no `--target` is given: a local queue
and the mock judge, whatever the shell exports for a real server.

A shell that runs `lps serve` often exports `LPS_QUEUE_BACKEND=redis`, `LPS_REDIS_URL`,
`LPS_AUTH_TOKENS` or a provider's API key. Taken by the embedded server they would make it join
that Redis queue as a replica, refuse `cj` itself, or spend money. So the embedded server reads
only the `LPS_*` settings that tune how it processes inside this process (`HONOURED_PREFIXES`);
every other one is ignored (README, docs/cj.md, docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager

from cj_client.batching import LLMBatchingMode
from cj_client.cli.tracing import tracing_from_env
from cj_client.errors import InputError
from lps_server.core.config import Settings
from lps_server.core.domain import ProcessingMode
from lps_server.core.errors import ConfigurationError

#: The `LPS_*` settings (by prefix) the embedded server takes from the environment: the mock
#: judge, bundling, batch gathering and polling, queue limits and timing, retries, concurrency
#: and the largest essay. Where it listens, who may call it, which queue and which providers it
#: uses (`LPS_GRPC_*`, `LPS_METRICS_*`, `LPS_AUTH_TOKENS`, `LPS_TLS_*`, `LPS_QUEUE_BACKEND`,
#: `LPS_REDIS_*`, `LPS_<PROVIDER>_*`) are not among them, nor the processing mode, which follows
#: the run's batching mode, nor the limits a shared server puts on each client (message size and
#: count, streams, rate): its only client is cj, which they could only refuse.
HONOURED_PREFIXES = (
    "LPS_MOCK_",
    "LPS_SERIAL_BUNDLE_",
    "LPS_BATCH_API_MAX_",
    "LPS_BATCH_API_POLL_",
    "LPS_QUEUE_MAX_",
    "LPS_QUEUE_LEASE_",
    "LPS_QUEUE_DEFAULT_TTL_",
    "LPS_QUEUE_PRIORITY_AGING_",
    "LPS_QUEUE_SWEEP_",
    "LPS_RESULT_RETENTION_",
    "LPS_RETRY_",
    "LPS_MAX_CONCURRENT_CALLS",
    "LPS_MAX_ESSAY_BYTES",
    "LPS_STREAM_RECHECK_",
    "LPS_SHUTDOWN_GRACE_",
)
#: The only provider the embedded server has.
EMBEDDED_PROVIDER = "mock"


def embedded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `env` the embedded server honours."""
    return {k: v for k, v in env.items() if k.startswith(HONOURED_PREFIXES)}


def embedded_settings(mode: LLMBatchingMode, env: Mapping[str, str] | None = None) -> Settings:
    """The embedded server's settings for a run in batching `mode`: serial_bundle runs get a
    bundling server and provider_batch_api runs a batch_api one (gathering 200 ms, polling every
    second unless LPS_BATCH_API_* say otherwise).

    Raises:
        InputError: an honoured `LPS_*` variable has a bad value (the message names it).
    """
    processing = {
        LLMBatchingMode.SERIAL_BUNDLE: ProcessingMode.SERIAL_BUNDLE,
        LLMBatchingMode.PROVIDER_BATCH_API: ProcessingMode.BATCH_API,
    }.get(mode, ProcessingMode.PER_REQUEST)
    honoured = embedded_env(os.environ if env is None else env)
    if processing == ProcessingMode.BATCH_API:
        # A server of one run: its waves need no long gathering, and are worth a quick look.
        honoured.setdefault("LPS_BATCH_API_MAX_WAIT_MS", "200")
        honoured.setdefault("LPS_BATCH_API_POLL_SECONDS", "1")
    try:
        return Settings.from_env(
            honoured, grpc_host="127.0.0.1", grpc_port=0, queue_processing_mode=processing
        )
    except ConfigurationError as exc:
        raise InputError(f"embedded LPS: {exc}") from None


def refuse_other_providers(providers: list[str]) -> None:
    """Refuse a run without --target whose judges the embedded server cannot call.

    Raises:
        InputError: a provider other than the mock is asked for.
    """
    others = sorted({p for p in providers if p != EMBEDDED_PROVIDER})
    if others:
        raise InputError(
            f"provider {', '.join(others)}: the embedded LPS (no --target) has the mock provider "
            "only; give --target HOST:PORT of an LPS configured for it"
        )


async def start_embedded_lps(
    stack: AsyncExitStack, settings: Settings, *, finished: Callable[[], bool], traced: bool
) -> str:
    """Start an in-process LPS for this run and return its address. It stops with `stack`;
    unless the run `finished`, whatever it still holds never reaches a provider. A traced run's
    LPS exports its spans as service `lps`, joining the run's trace."""
    from lps_server.app import LpsApp
    from lps_server.providers import ProviderRegistry

    stack.enter_context(embedded_log_lines())
    tracing = tracing_from_env(service_name="lps") if traced else None
    if tracing is not None:
        stack.push_async_callback(asyncio.to_thread, tracing.shutdown)
    # No provider settings: the mock only, whatever LPS_<PROVIDER>_API_KEY the shell holds.
    providers = ProviderRegistry.from_settings(settings, env={})
    app = LpsApp(settings, tracer_provider=tracing, providers=providers)
    await app.start(serve_metrics=False)

    async def stop() -> None:
        await app.stop(None if finished() else 0.0)

    stack.push_async_callback(stop)
    return f"127.0.0.1:{app.grpc_port}"


@contextmanager
def embedded_log_lines() -> Iterator[None]:
    """While the embedded server runs, its warnings (a provider failing, a shutdown cutting work
    short) are a line each on stderr, marked as its own, and its info logs are not shown; then
    the `lps_server` logger is as it was, for a program that runs `cj` as a library."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("cj assess: embedded LPS: %(message)s"))
    logger = logging.getLogger("lps_server")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = [handler]
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        handlers, level, propagate = saved
        logger.handlers = handlers
        logger.setLevel(level)  # setLevel, not `level =`: it clears the cached effective levels
        logger.propagate = propagate
