"""Every numeric LPS_* setting is checked: finite, in its declared range; `lps serve` refuses a bad
one with one line naming the variable and exit code 2, before it binds or starts anything."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from lps_server import cli
from lps_server.core.config import Range, Settings
from lps_server.core.errors import ConfigurationError
from lps_server.providers.http_settings import PREFIXES, HttpProvidersSettings

ROOT = Path(__file__).resolve().parent.parent
NUMERIC = [f for f in fields(Settings) if f.type in ("int", "float")]


def _bad_values(kind: str, allowed: Range | None) -> list[str]:
    """Values a setting of this type and range must refuse."""
    bad = ["nan", "inf", "-inf", "1e400"] if kind == "float" else ["nan", "1.5", "ten"]
    if allowed is None:
        return bad
    below = allowed.low if allowed.open_low else allowed.low - 1
    bad.append(repr(below) if kind == "float" else str(math.floor(below)))
    if allowed.high != math.inf:
        above = allowed.high * 2 + 1
        bad.append(repr(above) if kind == "float" else str(math.ceil(above)))
    return bad


SWEEP = [
    (f"LPS_{f.name.upper()}", value)
    for f in NUMERIC
    for value in _bad_values(str(f.type), f.metadata.get("range"))
]


def test_every_numeric_setting_is_in_the_sweep() -> None:
    # A new numeric setting joins the sweep by itself; this guards the sweep's own reach.
    assert len(NUMERIC) >= 33
    assert {name for name, _ in SWEEP} == {f"LPS_{f.name.upper()}" for f in NUMERIC}


@pytest.mark.parametrize(("variable", "value"), SWEEP)
def test_lps_serve_refuses_each_bad_value_in_one_line(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(["serve"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("lps: configuration error: "), err
    assert variable in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("LPS_QUEUE_SWEEP_INTERVAL_SECONDS", "0", "must be in 0.01..86400, got 0.0"),
        ("LPS_QUEUE_PRIORITY_AGING_SECONDS", "nan", "must be a finite number, got nan"),
        ("LPS_RESULT_RETENTION_SECONDS", "inf", "must be a finite number, got inf"),
        ("LPS_GRPC_PORT", "99999", "must be in 0..65535, got 99999"),
        ("LPS_METRICS_PORT", "-1", "must be in 0..65535, got -1"),
        ("LPS_QUEUE_LEASE_SECONDS", "0", "must be > 0 and <= 86400, got 0.0"),
    ],
)
def test_the_values_from_the_issue_are_refused_with_the_reason(
    variable: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({variable: value})
    assert str(caught.value) == f"{variable} {says}"


def test_a_flag_is_checked_like_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--port", "99999"]) == 2
    assert capsys.readouterr().err == (
        "lps: configuration error: LPS_GRPC_PORT must be in 0..65535, got 99999\n"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LPS_GRPC_PORT", "0"),
        ("LPS_GRPC_PORT", "65535"),
        ("LPS_QUEUE_SWEEP_INTERVAL_SECONDS", "0.01"),
    ],
)
def test_the_ends_of_a_range_are_accepted(variable: str, value: str) -> None:
    settings = Settings.from_env({variable: value})
    assert getattr(settings, variable.removeprefix("LPS_").lower()) == float(value)


def test_overrides_are_checked_too() -> None:
    with pytest.raises(ConfigurationError, match="LPS_QUEUE_SWEEP_INTERVAL_SECONDS"):
        Settings.from_env({}, queue_sweep_interval_seconds=0.0)


def test_a_bad_log_level_is_a_usage_error_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["serve", "--log-level", "chatty"])
    assert stopped.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_the_real_command_exits_2_with_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LPS_QUEUE_SWEEP_INTERVAL_SECONDS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "lps_server.cli", "serve", "--port", "0", "--metrics-port", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "lps: configuration error: LPS_QUEUE_SWEEP_INTERVAL_SECONDS must be in 0.01..86400, "
        "got 0.0\n"
    )


PROVIDER_NUMBERS = [
    ("TIMEOUT_SECONDS", ["nan", "inf", "0", "-1"]),
    ("CIRCUIT_BREAKER_COOLDOWN_SECONDS", ["nan", "inf", "-1"]),
    ("CIRCUIT_BREAKER_THRESHOLD", ["nan", "0"]),
    ("MAX_TOKENS_PER_ITEM", ["1.5", "0"]),
]


@pytest.mark.parametrize("prefix", sorted(PREFIXES.values()))
@pytest.mark.parametrize(("name", "values"), PROVIDER_NUMBERS)
def test_provider_numbers_are_checked_too(prefix: str, name: str, values: list[str]) -> None:
    configured = {
        f"{prefix}API_KEY": "k",
        f"{prefix}BASE_URL": "http://127.0.0.1:1",
        f"{prefix}MODEL": "m",
    }
    for value in values:
        with pytest.raises(ConfigurationError, match=prefix + name):
            HttpProvidersSettings.from_env({**configured, prefix + name: value})


@pytest.mark.parametrize("price", ["NaN", "Infinity", "-1"])
def test_a_price_must_be_a_finite_number(price: str) -> None:
    table = f'{{"m": {{"input_per_mtok": {price}, "output_per_mtok": 1}}}}'
    with pytest.raises(ConfigurationError, match="must be a finite number >= 0"):
        HttpProvidersSettings.from_env({"LPS_PRICE_TABLE": table})
