"""What the fake provider servers add to look like real providers' economics: their own token
count, prompt caching, and rate limits per rolling window with the vendors' headers and 429s.

* Tokens are counted the fake's own way (words and punctuation marks, `fake_tokens`), never the
  client's way, so a client's estimate is never exact and must learn from the provider.
* Caching: an Anthropic prompt caches the tool, system prompt and content blocks up to a block
  marked `cache_control` (when at least `cache_min_tokens` long), read on later calls within five
  minutes; an OpenAI prompt of at least 1,024 tokens has its longest prefix shared with a recent
  prompt served from the cache, in steps of 128 tokens (`prompt_tokens_details.cached_tokens`).
* Limits (`RollingLimits`): every call is charged at arrival, the way the vendors count it: OpenAI
  `requests` and `tokens` (prompt plus the answer allowance), Anthropic `requests`,
  `input_tokens` (uncached plus cache writes) and `output_tokens` (the allowance, replaced by the
  output produced once answered). A call that would take a window (`window_s`, a parameter so a
  benchmark can scale a minute down) over a limit is refused with 429 and Retry-After, and counts
  nothing. Every response carries the vendor's rate-limit headers.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")
KINDS = ("requests", "tokens", "input_tokens", "output_tokens")
CACHE_TTL_S = 300.0
OPENAI_CACHE_MIN = 1024
OPENAI_CACHE_STEP = 128


def fake_tokens(text: str) -> int:
    """The fake providers' token count: words and punctuation marks."""
    return len(_TOKEN.findall(text))


@dataclass
class Charge:
    """What one admitted call counts against the limits, from its arrival on."""

    at: float
    counts: dict[str, int]


@dataclass
class RollingLimits:
    """Limits per rolling window (0: that kind is not limited), and what was admitted."""

    window_s: float = 60.0
    requests: int = 0
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    charges: deque[Charge] = field(default_factory=deque)
    admitted: list[Charge] = field(default_factory=list)
    refused: int = 0

    def limit(self, kind: str) -> int:
        """The limit of `kind` (0: none)."""
        return int(getattr(self, kind))

    def _prune(self, now: float) -> None:
        while self.charges and self.charges[0].at <= now - self.window_s:
            self.charges.popleft()

    def used(self, kind: str, now: float) -> int:
        """What the window holds of `kind` at `now`."""
        self._prune(now)
        return sum(c.counts.get(kind, 0) for c in self.charges)

    def admit(self, counts: dict[str, int], now: float) -> tuple[Charge | None, float]:
        """The charge of an admitted call, or (None, seconds until it would fit)."""
        self._prune(now)
        wait = 0.0
        for kind in KINDS:
            limit = self.limit(kind)
            need = counts.get(kind, 0)
            excess = self.used(kind, now) + need - limit
            if not limit or excess <= 0:
                continue
            freed = 0
            for charge in self.charges:
                freed += charge.counts.get(kind, 0)
                if freed >= excess:
                    wait = max(wait, charge.at + self.window_s - now)
                    break
            else:
                wait = max(wait, self.window_s)
        if wait > 0:
            self.refused += 1
            return None, wait
        charge = Charge(now, dict(counts))
        self.charges.append(charge)
        self.admitted.append(charge)
        return charge, 0.0

    def reset_s(self, now: float) -> float:
        """Until the window is empty again."""
        return max(0.0, self.charges[-1].at + self.window_s - now) if self.charges else 0.0


@dataclass
class FakeEconomy:
    """Token counting, caching and rate limits of one fake server.

    Attributes:
        limits: the limits to enforce, or None (no limits, no headers).
        cache_min_tokens: Anthropic's shortest cacheable prefix, by the fake's count.
        send_headers: send the rate-limit headers (off: a server that enforces limits silently,
            as some compatible servers do; 429s still carry Retry-After).
        charge_factor: the limits count each prompt this many times its reported tokens, as
            OpenAI counts against its limit an estimate from the characters, not the usage.
    """

    limits: RollingLimits | None = None
    cache_min_tokens: int = 1024
    send_headers: bool = True
    charge_factor: float = 1.0
    _anthropic_cache: dict[str, float] = field(default_factory=dict)
    _openai_prompts: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    cache_reads: int = 0
    cache_writes: int = 0

    def prompt(self, flavour: str, body: dict[str, Any]) -> tuple[int, int, int]:
        """The prompt's tokens: (total, read from the cache, written to it)."""
        if flavour == "anthropic":
            return self._anthropic_prompt(body)
        return self._openai_prompt(body)

    def _anthropic_prompt(self, body: dict[str, Any]) -> tuple[int, int, int]:
        pieces = [json.dumps(body.get("tools", [])), _text(body.get("system", ""))]
        cached_upto = -1
        for m in body.get("messages", []):
            content = m.get("content") if isinstance(m, dict) else None
            blocks = content if isinstance(content, list) else [{"text": content or ""}]
            for block in blocks:
                pieces.append(_text(block))
                if isinstance(block, dict) and block.get("cache_control") == {"type": "ephemeral"}:
                    cached_upto = len(pieces)
        total = sum(fake_tokens(p) for p in pieces)
        if cached_upto < 0:
            return total, 0, 0
        prefix = "\x00".join(pieces[:cached_upto])
        size = sum(fake_tokens(p) for p in pieces[:cached_upto])
        if size < self.cache_min_tokens:
            return total, 0, 0
        now = time.monotonic()
        key = f"{body.get('model')}\x00{prefix}"
        seen = self._anthropic_cache.get(key)
        self._anthropic_cache[key] = now
        if seen is not None and now - seen < CACHE_TTL_S:
            self.cache_reads += 1
            return total, size, 0
        self.cache_writes += 1
        return total, 0, size

    def _openai_prompt(self, body: dict[str, Any]) -> tuple[int, int, int]:
        text = "\n".join(
            _text(m.get("content")) for m in body.get("messages", []) if isinstance(m, dict)
        )
        text += json.dumps(body.get("response_format", {}))
        total = fake_tokens(text)
        shared = max((_common_prefix(text, seen) for seen in self._openai_prompts), default=0)
        self._openai_prompts.append(text)
        if total < OPENAI_CACHE_MIN:
            return total, 0, 0
        cached = fake_tokens(text[:shared]) // OPENAI_CACHE_STEP * OPENAI_CACHE_STEP
        if cached >= OPENAI_CACHE_MIN:
            self.cache_reads += 1
            return total, cached, 0
        return total, 0, 0

    def charge(self, flavour: str, body: dict[str, Any], prompt: tuple[int, int, int]) -> dict:
        """What a call counts against the limits at arrival."""
        total, read, _ = prompt
        allowance = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        counted = round((total - read if flavour == "anthropic" else total) * self.charge_factor)
        if flavour == "anthropic":
            return {"requests": 1, "input_tokens": counted, "output_tokens": allowance}
        return {"requests": 1, "tokens": counted + allowance}

    def headers(self, flavour: str, now: float) -> dict[str, str]:
        """The vendor's rate-limit headers for the window at `now`."""
        if self.limits is None or not self.send_headers:
            return {}
        limits = self.limits
        reset = limits.reset_s(now)
        out: dict[str, str] = {}
        if flavour == "anthropic":
            at = datetime.fromtimestamp(time.time() + reset, UTC).isoformat().replace("+00:00", "Z")
            tightest: tuple[float, str] | None = None
            for word, kind in (
                ("requests", "requests"),
                ("input-tokens", "input_tokens"),
                ("output-tokens", "output_tokens"),
            ):
                limit = limits.limit(kind)
                if not limit:
                    continue
                remaining = max(0, limit - limits.used(kind, now))
                out[f"anthropic-ratelimit-{word}-limit"] = str(limit)
                out[f"anthropic-ratelimit-{word}-remaining"] = str(remaining)
                out[f"anthropic-ratelimit-{word}-reset"] = at
                if kind != "requests" and (tightest is None or remaining / limit < tightest[0]):
                    tightest = (remaining / limit, word)
            if tightest is not None:  # the combined headers repeat the most restrictive limit
                for part in ("limit", "remaining", "reset"):
                    out[f"anthropic-ratelimit-tokens-{part}"] = out[
                        f"anthropic-ratelimit-{tightest[1]}-{part}"
                    ]
            return out
        for kind in ("requests", "tokens"):
            limit = limits.limit(kind)
            if limit:
                out[f"x-ratelimit-limit-{kind}"] = str(limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - limits.used(kind, now)))
                out[f"x-ratelimit-reset-{kind}"] = go_duration(reset)
        return out


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes resets: `6m0s`, `1s`, `20ms`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def retry_after_headers(flavour: str, wait_s: float) -> dict[str, str]:
    """A 429's Retry-After: whole seconds (and OpenAI's `retry-after-ms`)."""
    out = {"retry-after": str(max(1, math.ceil(wait_s)))}
    if flavour == "openai":
        out["retry-after-ms"] = str(max(1, math.ceil(wait_s * 1000)))
    return out


def _text(part: object) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict):
        return str(part.get("text", ""))
    if isinstance(part, list):
        return "\n".join(_text(p) for p in part)
    return ""


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix (bisection on slices: fast on long prompts)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
