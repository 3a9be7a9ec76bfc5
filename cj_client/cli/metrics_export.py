"""Where `cj assess` sends its metrics: a `/metrics` endpoint while it runs, and a Prometheus
Pushgateway that keeps them after the process has gone.

A run is short-lived: a scrape every 15 s misses whatever happened after the last one, and a
counter that lives one run never shows an `increase()`. With `--pushgateway URL` the run pushes
its registry at its start (every counter at 0), after every wave and at exit, to its own group
`job="cj_assess", instance="<cj_batch_id>-<random>"`, so that runs, even concurrent ones or
continuations of one batch, never overwrite each other's totals. PromQL sums over the groups.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import threading
import uuid
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, push_to_gateway, start_http_server

PUSH_JOB = "cj_assess"
PUSH_TIMEOUT_S = 5.0


class MetricsExportError(Exception):
    """The metrics endpoint or the Pushgateway asked for cannot be used; the message says why."""


def add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    """`--metrics-host`, `--metrics-port` and `--pushgateway`."""
    parser.add_argument("--metrics-port", type=int, help="serve CJ metrics on this port")
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of --metrics-port (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--pushgateway",
        type=_gateway_url,
        help="push CJ metrics to this Prometheus Pushgateway (http://host:9091) "
        "at the start, after every wave and at exit",
    )


def _gateway_url(raw: str) -> str:
    url = raw if "://" in raw else f"http://{raw}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL of a Pushgateway: {raw!r}")
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad port in {raw!r}: {exc}") from None
    return url.rstrip("/")


class MetricsExport:
    """A run's registry, served and pushed as the flags ask.

    Args:
        registry: the run's CJ metrics.
        pushgateway: the Pushgateway's URL, or None.
        instance: the run's grouping key value (see the module docstring).
    """

    def __init__(
        self, registry: CollectorRegistry, *, pushgateway: str | None, instance: str
    ) -> None:
        self.registry = registry
        self.pushgateway = pushgateway
        self.grouping = {"instance": instance}
        # One thread: pushes are sent in order, so a later push never lands before an earlier one.
        self._pusher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cj-push")
        self._lock = threading.Lock()
        self._queued = False
        self._warned = False

    @classmethod
    async def start(
        cls, args: argparse.Namespace, *, registry: CollectorRegistry, cj_batch_id: str
    ) -> MetricsExport:
        """Serve `/metrics` if asked, and push the run's counters (all 0) once.

        Raises:
            MetricsExportError: the port cannot be bound or the Pushgateway cannot be reached:
                nothing has been sent to LPS yet.
        """
        instance = f"{cj_batch_id}-{uuid.uuid4().hex[:8]}"
        export = cls(registry, pushgateway=args.pushgateway, instance=instance)
        if args.metrics_port is not None:
            try:
                start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
            except OSError as exc:
                address = f"{args.metrics_host}:{args.metrics_port}"
                raise MetricsExportError(f"cannot serve metrics on {address}: {exc}") from None
        if export.pushgateway:
            try:
                await asyncio.get_running_loop().run_in_executor(export._pusher, export._push)
            except OSError as exc:
                export._pusher.shutdown()
                raise MetricsExportError(
                    f"cannot push metrics to the Pushgateway at {export.pushgateway}: {exc}"
                ) from None
        return export

    def wave_done(self) -> None:
        """Push soon, without waiting; pushes asked for while one waits to be sent are one."""
        if not self.pushgateway:
            return
        with self._lock:
            if self._queued:
                return
            self._queued = True
        self._pusher.submit(self._push_or_warn)

    async def close(self) -> None:
        """Push the final values (waiting at most PUSH_TIMEOUT_S for the gateway), then stop."""
        if self.pushgateway:
            loop = asyncio.get_running_loop()
            final = loop.run_in_executor(self._pusher, self._push_or_warn)
            try:
                await asyncio.wait_for(final, PUSH_TIMEOUT_S * 2)
            except TimeoutError:
                self._warn("the final push timed out")
        self._pusher.shutdown(wait=False)

    def _push(self) -> None:
        with self._lock:
            self._queued = False  # anything counted from now on is in this push or a later one
        assert self.pushgateway is not None
        push_to_gateway(
            self.pushgateway,
            job=PUSH_JOB,
            registry=self.registry,
            grouping_key=self.grouping,
            timeout=PUSH_TIMEOUT_S,
        )

    def _push_or_warn(self) -> None:
        try:
            self._push()
        except OSError as exc:
            self._warn(str(exc))
        else:
            self._warned = False

    def _warn(self, why: str) -> None:
        if not self._warned:  # once per failing streak, not once per wave
            self._warned = True
            print(f"cj: warning: metrics push to {self.pushgateway} failed: {why}", file=sys.stderr)
