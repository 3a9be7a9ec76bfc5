"""A private Prometheus and Pushgateway for tests: Debian's binaries on free ports, 1 s scrapes,
their own config and storage, and a small client for Prometheus's HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.redis_server import free_port

T = TypeVar("T")
START_S = 30.0


def binary(name: str) -> str:
    """The path of a Debian-packaged Prometheus binary (`make test` installs them)."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: run `make test` (it installs it)")
    return found


def http_get(url: str, *, timeout: float = 5.0) -> bytes:
    """GET `url`; the body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body


def wait_for(check: Callable[[], T | None], what: str, *, timeout: float = START_S) -> T:
    """Poll `check` until it returns something other than None (or False), with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


class _Process:
    """A child process with its own directory, stopped (and the directory removed) by close()."""

    def __init__(self, prefix: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.dir / "log.txt"

    @property
    def url(self) -> str:
        """Base URL of its HTTP interface."""
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, argv: Sequence[str]) -> None:
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _ready(self, path: str) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"{self._proc.args[0]} exited: {self._log.read_text()[-2000:]}")
        try:
            http_get(self.url + path, timeout=1)
        except (urllib.error.URLError, OSError):
            return False
        return True

    def close(self) -> None:
        """Stop the process and remove its directory."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class PushgatewayProcess(_Process):
    """`prometheus-pushgateway` on 127.0.0.1:`port`, keeping nothing on disk."""

    def __init__(self) -> None:
        super().__init__("lps-pushgateway-")

    def start(self) -> None:
        """Start it and wait until it answers."""
        self._spawn(
            [
                binary("prometheus-pushgateway"),
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--persistence.file=",
            ]
        )
        wait_for(lambda: self._ready("/-/ready"), "the Pushgateway to start")


class PrometheusProcess(_Process):
    """`prometheus` on 127.0.0.1:`port`, scraping `targets` (job name -> host:port) every second
    and evaluating `rule_files` every second; jobs in `honor_labels` keep pushed job labels."""

    def __init__(
        self,
        targets: dict[str, list[str]],
        *,
        rule_files: Sequence[Path] = (),
        honor_labels: Sequence[str] = (),
    ) -> None:
        super().__init__("lps-prometheus-")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "honor_labels": job in honor_labels,
                    "static_configs": [{"targets": hosts}],
                }
                for job, hosts in targets.items()
            ],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def start(self) -> None:
        """Start it and wait until it is ready to answer queries."""
        self._spawn(
            [
                binary("prometheus"),
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ]
        )
        wait_for(lambda: self._ready("/-/ready"), "Prometheus to start")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/`path`; the `data` of a successful answer."""
        query = urllib.parse.urlencode(params)
        answer = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}"))
        if answer.get("status") != "success":
            raise AssertionError(f"{path} {params}: {answer}")
        return answer["data"]

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's vector (each item has `metric` and `value`)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str, *, at: float | None = None) -> float:
        """The single value of an instant query that yields exactly one sample."""
        result = self.query(expr, at=at)
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def targets_up(self) -> bool:
        """True once every target has been scraped successfully."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)
