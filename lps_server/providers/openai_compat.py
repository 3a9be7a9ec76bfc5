"""Chat Completions adapter for OpenAI and OpenAI-compatible servers (vLLM, Ollama, OpenRouter...).

`POST {base}/chat/completions` with `Authorization: Bearer <key>` (left out when no key is set, for
local servers) and `response_format: json_schema` in strict mode, so the message content is a JSON
document that matches the answer schema.

OpenAI caches prompt prefixes by itself (from 1,024 tokens on); the prompt keeps what all calls
share first and byte-identical (system message, then the task and instructions), and the usage's
`prompt_tokens_details.cached_tokens` says how much of `prompt_tokens` the cache served.
"""

from __future__ import annotations

import json
from typing import Any

from lps_server.core.domain import ProviderName, TokenUsage
from lps_server.providers.http_provider import HttpCall, HttpProvider, UnusableAnswer, usage_field
from lps_server.providers.prompting import ANSWER_NAME, Prompt, answer_schema


class OpenAICompatibleProvider(HttpProvider):
    """Chat Completions with a strict JSON-schema answer; serves PROVIDER_OPENAI and
    PROVIDER_OPENAI_COMPATIBLE, whichever its settings name."""

    def _request(
        self, prompt: Prompt, *, model: str, max_tokens: int, temperature: float | None
    ) -> HttpCall:
        headers = {"Content-Type": "application/json"}
        key = self._settings.api_key.reveal()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body: dict[str, object] = {
            "model": model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": ANSWER_NAME, "strict": True, "schema": answer_schema()},
            },
        }
        # OpenAI's current models refuse `max_tokens` in favour of `max_completion_tokens`;
        # compatible servers (vLLM, Ollama, OpenRouter) all understand `max_tokens`.
        if self.name == ProviderName.OPENAI:
            body["max_completion_tokens"] = max_tokens
        else:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        return HttpCall("/chat/completions", headers, body)

    def _usage(self, body: dict[str, Any]) -> tuple[TokenUsage, int]:
        usage = body.get("usage")
        details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
        prompt_tokens = usage_field(usage, "prompt_tokens")
        # prompt_tokens includes the cached tokens: they are a part of it, never added to it.
        cached = min(prompt_tokens, usage_field(details, "cached_tokens"))
        tokens = TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=usage_field(usage, "completion_tokens"),
            cache_read_tokens=cached,
        )
        return tokens, prompt_tokens

    def _answer(self, body: dict[str, Any]) -> object:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise UnusableAnswer("response has no choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise UnusableAnswer("response choice has no message")
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            raise UnusableAnswer(f"the model refused: {refusal[:200]}")
        content = message.get("content")
        if not isinstance(content, str):
            raise UnusableAnswer("response message has no text content")
        try:
            return json.loads(content)
        except ValueError:
            truncated = choice.get("finish_reason") == "length"
            reason = "answer was cut off at the token limit" if truncated else "answer is not JSON"
            raise UnusableAnswer(reason) from None
