"""Facts about models that bound a call: the context window and the shortest cacheable prefix.

Both are looked up by the longest matching name prefix, so dated snapshots
(`claude-haiku-4-5-20251001`) find their family. Values are the vendors' documented ones at the
time of writing; a model not listed has no known context (only
`LPS_<P>_MAX_INPUT_TOKENS_PER_CALL` bounds its calls) and the most common cache minimum.
"""

from __future__ import annotations

from collections.abc import Mapping

# Prompt plus answer, in tokens.
CONTEXT_TOKENS: Mapping[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "claude-": 200_000,
}
# Anthropic caches a marked prefix only from this many tokens on; a shorter prefix marked with
# cache_control is simply not cached (and a write would be paid for nothing on the next call).
CACHE_MIN_TOKENS: Mapping[str, int] = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
    "claude-haiku-3": 2048,
}
DEFAULT_CACHE_MIN_TOKENS = 1024


def _lookup(table: Mapping[str, int], model: str, default: int) -> int:
    matches = [prefix for prefix in table if model.startswith(prefix)]
    return table[max(matches, key=len)] if matches else default


def context_tokens(model: str) -> int:
    """The model's context window in tokens, 0 when unknown."""
    return _lookup(CONTEXT_TOKENS, model, 0)


def cache_min_tokens(model: str) -> int:
    """The shortest prefix, in tokens, that the model's prompt cache stores."""
    return _lookup(CACHE_MIN_TOKENS, model, DEFAULT_CACHE_MIN_TOKENS)
