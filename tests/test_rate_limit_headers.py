"""Reading the vendors' rate-limit headers: OpenAI durations, Anthropic RFC 3339 times, the
combined Anthropic headers, Retry-After; a header that does not parse is ignored."""

from __future__ import annotations

import pytest

from lps_server.core.rates import LimitReading
from lps_server.providers.rate_limit_headers import (
    parse_duration,
    parse_reset_time,
    read_rate_limits,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5)],
)
def test_openai_reset_durations(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "soon", "6m0", "1x", "-", "inf", "nan"])
def test_a_duration_that_does_not_parse_is_none(raw: str) -> None:
    assert parse_duration(raw) is None


def test_anthropic_reset_times_are_rfc3339() -> None:
    assert parse_reset_time("2026-01-01T00:00:34Z", now=NOW) == pytest.approx(34.0)
    assert parse_reset_time("2026-01-01T01:00:00+01:00", now=NOW) == pytest.approx(0.0)
    assert parse_reset_time("2025-12-31T23:59:00Z", now=NOW) == 0.0  # past: now
    assert parse_reset_time("tomorrow", now=NOW) is None
    assert parse_reset_time("2026-01-01T00:00:34", now=NOW) is None  # no zone


def test_openai_headers() -> None:
    reading = read_rate_limits(
        {
            "x-ratelimit-limit-requests": "50",
            "x-ratelimit-remaining-requests": "42",
            "x-ratelimit-reset-requests": "34s",
            "x-ratelimit-limit-tokens": "40000",
            "x-ratelimit-remaining-tokens": "18000",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        now=NOW,
    )
    assert reading is not None
    assert reading.kinds == {
        "requests": LimitReading(50, 42, 34.0),
        "tokens": LimitReading(40000, 18000, 360.0),
    }
    assert reading.used().requests == 8
    assert reading.used().tokens == 22000
    assert reading.retry_after_s is None


def test_anthropic_headers_keep_input_and_output_apart() -> None:
    at = "2026-01-01T00:00:10Z"
    reading = read_rate_limits(
        {
            "anthropic-ratelimit-requests-limit": "1000",
            "anthropic-ratelimit-requests-remaining": "999",
            "anthropic-ratelimit-requests-reset": at,
            "anthropic-ratelimit-input-tokens-limit": "80000",
            "anthropic-ratelimit-input-tokens-remaining": "0",
            "anthropic-ratelimit-input-tokens-reset": at,
            "anthropic-ratelimit-output-tokens-limit": "16000",
            "anthropic-ratelimit-output-tokens-remaining": "16000",
            "anthropic-ratelimit-output-tokens-reset": at,
            # The combined headers repeat the most restrictive limit: not a limit of their own.
            "anthropic-ratelimit-tokens-limit": "80000",
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": at,
            "retry-after": "7",
        },
        now=NOW,
    )
    assert reading is not None
    assert set(reading.kinds) == {"requests", "input_tokens", "output_tokens"}
    assert reading.limits().input_tokens == 80000
    assert reading.used().input_tokens == 80000
    assert reading.retry_after_s == 7.0
    assert reading.exhausted_reset_s() == pytest.approx(10.0)


def test_anthropic_combined_headers_alone_are_a_tokens_limit() -> None:
    reading = read_rate_limits(
        {"anthropic-ratelimit-tokens-limit": "96000", "anthropic-ratelimit-tokens-remaining": "1"},
        now=NOW,
    )
    assert reading is not None
    assert reading.kinds == {"tokens": LimitReading(96000, 1, None)}


def test_no_headers_is_no_reading_and_garbage_is_ignored() -> None:
    assert read_rate_limits({"content-type": "application/json"}) is None
    reading = read_rate_limits(
        {"x-ratelimit-limit-tokens": "lots", "x-ratelimit-remaining-tokens": "5"}, now=NOW
    )
    assert reading is not None
    assert reading.kinds == {"tokens": LimitReading(None, 5, None)}
    assert reading.used().tokens == 0  # no limit known: nothing can be said of the use


@pytest.mark.parametrize("raw", ["9223372036854775807", "1e300", "inf", "nan"])
def test_counts_past_exact_floats_or_not_finite_are_no_figure(raw: str) -> None:
    """INT64_MAX is how some gateways say "no limit"; read as a limit it overflowed Redis's Lua
    numbers to -2**63 and failed every comparison as larger than the budget."""
    reading = read_rate_limits(
        {"x-ratelimit-limit-tokens": raw, "x-ratelimit-remaining-tokens": raw}, now=NOW
    )
    assert reading is None
