"""Anthropic Messages adapter: `POST {base}/v1/messages`, answered through a forced tool call.

Anthropic has no JSON response format; forcing the model to call one tool (`tool_choice` of type
`tool`) whose `input_schema` is the answer schema gives the same structured answer, found in the
response's `tool_use` block.
"""

from __future__ import annotations

from lps_server.providers.http_provider import HttpCall, HttpProvider, ProviderReply, usage_field
from lps_server.providers.prompting import ANSWER_NAME, Prompt, answer_schema

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(HttpProvider):
    """The Messages API with a forced tool call carrying the answer."""

    def _request(
        self, prompt: Prompt, *, model: str, max_tokens: int, temperature: float | None
    ) -> HttpCall:
        headers = {
            "Content-Type": "application/json",
            "x-api-key": self._settings.api_key.reveal(),
            "anthropic-version": ANTHROPIC_VERSION,
        }
        body: dict[str, object] = {
            "model": model,
            "max_tokens": max_tokens,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
            "tools": [
                {
                    "name": ANSWER_NAME,
                    "description": "Record the verdict of every comparison in the prompt.",
                    "input_schema": answer_schema(),
                }
            ],
            "tool_choice": {"type": "tool", "name": ANSWER_NAME},
        }
        if temperature is not None:
            body["temperature"] = temperature
        return HttpCall("/v1/messages", headers, body)

    def _reply(self, body: object) -> ProviderReply:
        if not isinstance(body, dict) or not isinstance(body.get("content"), list):
            raise self.invalid("response has no content list")
        answer = None
        for block in body["content"]:
            if (
                isinstance(block, dict)
                and block.get("type") == "tool_use"
                and block.get("name") == ANSWER_NAME
            ):
                answer = block.get("input")
                break
        if answer is None:
            truncated = body.get("stop_reason") == "max_tokens"
            reason = "answer was cut off at the token limit" if truncated else "no tool_use answer"
            raise self.invalid(reason)
        usage = body.get("usage")
        # Cached prompt tokens are still prompt tokens; the price table has one input price.
        return ProviderReply(
            answer=answer,
            prompt_tokens=usage_field(
                usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"
            ),
            completion_tokens=usage_field(usage, "output_tokens"),
        )
