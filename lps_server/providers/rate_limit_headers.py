"""What a provider's response headers say about its rate limits, in one shape for every vendor.

* OpenAI and most compatible servers: `x-ratelimit-limit-requests`,
  `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the same three for `-tokens`;
  resets are durations such as `6m0s`, `1s`, `20ms`.
* Anthropic: `anthropic-ratelimit-requests-limit` / `-remaining` / `-reset` and the same for
  `-input-tokens`, `-output-tokens` and `-tokens`; resets are RFC 3339 times. Anthropic limits input
  and output tokens separately and its `-tokens-*` headers repeat the most restrictive of the two,
  so they are read as a combined limit only when the separate ones are absent.
* `Retry-After` (or `retry-after-ms`), as for every 429.

A header that does not parse is ignored, never an error: a quirky header must not fail a call.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime

import httpx

from lps_server.core.rates import LimitReading, RateLimitReading
from lps_server.providers.http_errors import parse_retry_after, parse_seconds

# The largest count a header may carry: 2**53, where floats stop counting exactly (and far
# below where Redis's Lua numbers stop: 2**63).
MAX_COUNT = 2**53
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Header family -> the kinds it reports (header word -> RateCounts field).
_OPENAI = {"requests": "requests", "tokens": "tokens"}
_ANTHROPIC = {
    "requests": "requests",
    "input-tokens": "input_tokens",
    "output-tokens": "output_tokens",
    "tokens": "tokens",
}


def parse_duration(raw: str) -> float | None:
    """Seconds in an OpenAI reset duration (`6m0s`, `1s`, `20ms`, `1h2m3.5s`, or plain seconds)."""
    raw = raw.strip()
    if (seconds := parse_seconds(raw)) is not None:
        return seconds
    parts = _DURATION.findall(raw)
    if not parts or "".join(n + u for n, u in parts) != raw:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_reset_time(raw: str, *, now: float) -> float | None:
    """Seconds from `now` until an RFC 3339 time (Anthropic's resets), at least 0."""
    try:
        when = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _int(raw: str | None) -> int | None:
    """A count in a header, or None. Counts past MAX_COUNT are how some gateways say "no limit"
    (INT64_MAX): they are read as no figure at all, never as a limit."""
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value > MAX_COUNT:
        return None
    return max(0, int(value))


def read_rate_limits(
    headers: httpx.Headers | Mapping[str, str], *, now: float | None = None
) -> RateLimitReading | None:
    """The rate-limit headers of a response, or None when it carries none."""
    h = httpx.Headers(headers)
    now = time.time() if now is None else now
    kinds: dict[str, LimitReading] = {}
    for word, kind in _OPENAI.items():
        reading = LimitReading(
            _int(h.get(f"x-ratelimit-limit-{word}")),
            _int(h.get(f"x-ratelimit-remaining-{word}")),
            parse_duration(h[f"x-ratelimit-reset-{word}"])
            if f"x-ratelimit-reset-{word}" in h
            else None,
        )
        if reading != LimitReading():
            kinds[kind] = reading
    for word, kind in _ANTHROPIC.items():
        base = f"anthropic-ratelimit-{word}"
        reset = h.get(f"{base}-reset")
        reading = LimitReading(
            _int(h.get(f"{base}-limit")),
            _int(h.get(f"{base}-remaining")),
            parse_reset_time(reset, now=now) if reset is not None else None,
        )
        if reading != LimitReading():
            kinds[kind] = reading
    # Anthropic's combined headers repeat the tighter of input and output: not a third limit.
    separate = "input_tokens" in kinds or "output_tokens" in kinds
    if separate and any(k.startswith("anthropic-ratelimit-tokens") for k in h):
        kinds.pop("tokens", None)
    retry_after = parse_retry_after(h, now=now)
    if not kinds and retry_after is None:
        return None
    return RateLimitReading(kinds, retry_after)
