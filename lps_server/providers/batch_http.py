"""The HTTP calls of the batch APIs: one attempt each, errors translated as for synchronous calls,
and, for the call that creates a batch, "outcome unknown" told apart from "not created".

A create request that timed out while reading the answer, lost its connection after it was sent,
or got a 5xx may have created the batch all the same; one refused before it was sent (connection
refused, connect timeout) or answered 4xx did not. Only the first kind needs `find` before
another attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import orjson

from lps_server.core.domain import ErrorCode, Overrides, ProviderName
from lps_server.providers.base import ItemOutcome, ProviderCallError
from lps_server.providers.batch_base import BatchLine, CreationUnknown, batch_cost, line_outcomes
from lps_server.providers.http_errors import error_for_status, error_for_transport
from lps_server.providers.http_provider import HttpProvider
from lps_server.providers.http_settings import HttpProviderSettings
from lps_server.providers.prompting import build_prompt

# Batches listed per page when looking for one whose creation's answer was lost.
LIST_PAGE = 100
# Failures that prove a request never left this process.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class BatchHttp:
    """Calls below one provider's base URL with its credentials.

    Args:
        settings: the provider's settings (URL, key, timeout).
        headers: the headers every call carries (authentication, API version).
        client: an httpx client (one is made, and closed by `aclose`, by default).
    """

    def __init__(
        self,
        settings: HttpProviderSettings,
        headers: Mapping[str, str],
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = settings
        self._headers = dict(headers)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_s), follow_redirects=False
        )

    @property
    def timeout_s(self) -> float:
        """The most one call may take."""
        return self._settings.timeout_s

    async def call(
        self,
        method: str,
        url: str,
        *,
        creating: bool = False,
        **request: Any,
    ) -> httpx.Response:
        """Send one request (`url` below the base URL, or absolute); a non-error response.

        Raises:
            CreationUnknown: with `creating`, when the request may have been acted on.
            ProviderCallError: otherwise, for any failure.
        """
        name = self._settings.provider
        full = url if url.startswith(("http://", "https://")) else self._settings.base_url + url
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.request(
                    method, full, headers=self._headers, **request
                )
        except (httpx.RequestError, TimeoutError) as exc:
            failure = error_for_transport(name, exc, timeout_s=self.timeout_s)
            if creating and not isinstance(exc, _NOT_SENT):
                raise CreationUnknown(failure.failure.message) from None
            raise failure from None
        if response.status_code >= 400:
            failure = error_for_status(name, response, secret=self._settings.api_key)
            if creating and response.status_code >= 500:
                raise CreationUnknown(failure.failure.message)
            raise failure
        return response

    async def json(self, method: str, url: str, **request: Any) -> dict[str, Any]:
        """`call`, then the body as a JSON object."""
        response = await self.call(method, url, **request)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ProviderCallError(
                ErrorCode.INVALID_RESPONSE,
                f"{self._settings.provider.value}: {method} {url} did not answer a JSON object",
            )
        return body

    async def aclose(self) -> None:
        """Close the client if it is this object's own."""
        if self._owns_client:
            await self._client.aclose()


def jsonl_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL document; blank lines and lines that are not objects are
    skipped (the lines they would have answered read as missing, and are retried)."""
    found = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


class HttpBatchApi:
    """What the OpenAI and Anthropic batch adapters share: the synchronous adapter that builds
    each line's request body and reads each line's answer, exactly as for a synchronous call
    (batch lines are those same requests), and the batch price.

    Args:
        provider: the provider's synchronous adapter.
        headers: the headers of the batch endpoints.
        client: an httpx client (one is made by default).
    """

    def __init__(
        self,
        provider: HttpProvider,
        headers: Mapping[str, str],
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        # The batch adapter is the synchronous adapter's companion: same settings, same bodies.
        self._provider = provider
        self._settings: HttpProviderSettings = provider._settings
        self._http = BatchHttp(self._settings, headers, client=client)

    @property
    def name(self) -> ProviderName:
        """The provider."""
        return self._settings.provider

    @property
    def call_timeout_s(self) -> float:
        """LPS_<P>_TIMEOUT_SECONDS: the most one batch API call may take."""
        return self._http.timeout_s

    def line_body(self, line: BatchLine, *, model: str, overrides: Overrides) -> dict[str, Any]:
        """The request body of one line: the synchronous bundle call's body for its items."""
        prompt = build_prompt(line.items, system_prompt=overrides.system_prompt)
        per_item = overrides.max_tokens or self._settings.max_tokens_per_item
        call = self._provider._request(
            prompt,
            model=model,
            max_tokens=per_item * len(line.items),
            temperature=overrides.temperature,
        )
        return dict(call.body)

    def answered(self, body: object, line: BatchLine, model: str) -> list[ItemOutcome]:
        """The outcomes of a line the provider answered with `body` (a synchronous response
        body), priced at the batch price; an unusable answer fails every item of the line."""
        try:
            reply = self._provider._reply(body)
            rule = self._provider.cache_rule
            return line_outcomes(
                reply,
                line.items,
                lambda usage: batch_cost(self._settings.prices, model, usage, rule=rule),
            )
        except ProviderCallError as exc:
            return [exc.failure] * len(line.items)

    def refused(self, status_code: int, body: object, line: BatchLine) -> list[ItemOutcome]:
        """The outcomes of a line the provider answered with an error status, classified as a
        synchronous call's would be (429 and 5xx retried, other 4xx not)."""
        response = httpx.Response(status_code, json=body if isinstance(body, dict) else {})
        failure = error_for_status(self.name, response, secret=self._settings.api_key)
        return [failure.failure] * len(line.items)

    async def listed(
        self, path: str, *, cursor: str, since: float, created: Callable[[dict[str, Any]], float]
    ) -> AsyncIterator[dict[str, Any]]:
        """The provider's batches at `path`, newest first (a page at a time, `cursor` naming the
        paging parameter), until a page reaches back before `since`."""
        after = ""
        while True:
            params: dict[str, Any] = {"limit": LIST_PAGE}
            if after:
                params[cursor] = after
            page = await self._http.json("GET", path, params=params)
            batches = [b for b in page.get("data") or [] if isinstance(b, dict)]
            for batch in batches:
                yield batch
            oldest = min((created(b) for b in batches), default=0.0)
            if not page.get("has_more") or not batches or oldest < since:
                return
            after = text_of(page.get("last_id")) or text_of(batches[-1].get("id"))

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()


def text_of(value: object) -> str:
    """A JSON value as text ("" when it is not a string)."""
    return value if isinstance(value, str) else ""
