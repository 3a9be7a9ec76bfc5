"""Anthropic Messages adapter: `POST {base}/v1/messages`, answered through a forced tool call.

Anthropic has no JSON response format; forcing the model to call one tool (`tool_choice` of type
`tool`) whose `input_schema` is the answer schema gives the same structured answer, found in the
response's `tool_use` block.

Prompt caching: the tool, the system prompt and the first block of the user message (the task and
the shared instructions) are the same in every call with the same instructions, in that order,
which is the order Anthropic caches a prompt in. When they are long enough for the model's cache
(`model_limits.cache_min_tokens`) and `LPS_ANTHROPIC_PROMPT_CACHING` is on, that block carries
`cache_control: {"type": "ephemeral"}`, so later calls read the prefix from the cache. Usage
reports `input_tokens` (after the last cache breakpoint), `cache_creation_input_tokens` and
`cache_read_input_tokens` apart; their sum is the prompt.
"""

from __future__ import annotations

import json
from typing import Any

from lps_server.core.domain import TokenUsage
from lps_server.core.rates import RateCounts
from lps_server.providers.call_report import MESSAGE_OVERHEAD_TOKENS, estimate_tokens
from lps_server.providers.http_provider import (
    HttpCall,
    HttpProvider,
    ProviderReply,
    UnusableAnswer,
    usage_field,
)
from lps_server.providers.model_limits import cache_min_tokens
from lps_server.providers.pricing import ANTHROPIC_CACHE_RULE
from lps_server.providers.prompting import ANSWER_NAME, Prompt, answer_schema

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(HttpProvider):
    """The Messages API with a forced tool call carrying the answer."""

    cache_rule = ANTHROPIC_CACHE_RULE

    def caches_prefix(self, prompt: Prompt, model: str) -> bool:
        """True when the call marks its shared prefix for the prompt cache: caching is on and
        the prefix (tool, system prompt, task and instructions) is long enough for the model."""
        if not self._settings.prompt_caching:
            return False
        tool = json.dumps(_tool())
        prefix = estimate_tokens(tool + prompt.system + prompt.prefix) + MESSAGE_OVERHEAD_TOKENS
        return prefix >= cache_min_tokens(model)

    def _request(
        self, prompt: Prompt, *, model: str, max_tokens: int, temperature: float | None
    ) -> HttpCall:
        headers = {
            "Content-Type": "application/json",
            "x-api-key": self._settings.api_key.reveal(),
            "anthropic-version": ANTHROPIC_VERSION,
        }
        prefix: dict[str, object] = {"type": "text", "text": prompt.prefix}
        if self.caches_prefix(prompt, model):
            prefix["cache_control"] = {"type": "ephemeral"}
        body: dict[str, object] = {
            "model": model,
            "max_tokens": max_tokens,
            "system": prompt.system,
            "messages": [
                {"role": "user", "content": [prefix, {"type": "text", "text": prompt.body}]}
            ],
            "tools": [_tool()],
            "tool_choice": {"type": "tool", "name": ANSWER_NAME},
        }
        if temperature is not None:
            body["temperature"] = temperature
        return HttpCall("/v1/messages", headers, body)

    def _usage(self, body: dict[str, Any]) -> tuple[TokenUsage, int]:
        usage = body.get("usage")
        # input_tokens excludes the cached tokens: the prompt is the sum of the three kinds.
        uncached = usage_field(usage, "input_tokens")
        written = usage_field(usage, "cache_creation_input_tokens")
        read = usage_field(usage, "cache_read_input_tokens")
        tokens = TokenUsage(
            prompt_tokens=uncached + written + read,
            completion_tokens=usage_field(usage, "output_tokens"),
            cache_read_tokens=read,
            cache_write_tokens=written,
        )
        # Cache reads do not count towards the input-token limit of current models.
        return tokens, uncached + written

    def _answer(self, body: dict[str, Any]) -> object:
        content = body.get("content")
        if not isinstance(content, list):
            raise UnusableAnswer("response has no content list")
        answer = None
        for block in content:
            if (
                isinstance(block, dict)
                and block.get("type") == "tool_use"
                and block.get("name") == ANSWER_NAME
            ):
                answer = block.get("input")
                break
        if answer is not None:
            return answer
        truncated = body.get("stop_reason") == "max_tokens"
        reason = "answer was cut off at the token limit" if truncated else "no tool_use answer"
        raise UnusableAnswer(reason)

    def _counted(self, reply: ProviderReply, allowance: int) -> RateCounts:
        # Anthropic counts the output actually produced (it adjusts its estimate at the end).
        counted = super()._counted(reply, allowance)
        tokens = counted.input_tokens + counted.output_tokens
        return RateCounts(counted.requests, tokens, counted.input_tokens, counted.output_tokens)


def _tool() -> dict[str, object]:
    return {
        "name": ANSWER_NAME,
        "description": "Record the verdict of every comparison in the prompt.",
        "input_schema": answer_schema(),
    }
