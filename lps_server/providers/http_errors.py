"""Translation of HTTP outcomes into provider failures, in one place for every HTTP provider.

429 is RATE_LIMITED with the provider's Retry-After; 5xx (and Anthropic's 529 "overloaded"),
connection errors and 408 are PROVIDER_UNAVAILABLE or TIMEOUT; other 4xx are PROVIDER_ERROR and not
retried, since the same request would fail the same way. Messages carry the provider's own error
text but never request headers, and any echo of the API key is masked.
"""

from __future__ import annotations

import email.utils
import json
import math
import time

import httpx

from lps_server.core.domain import ErrorCode, ProviderName
from lps_server.providers.base import ProviderCallError
from lps_server.providers.http_settings import Secret

MAX_MESSAGE_CHARS = 300
MASK = "[redacted]"


def parse_seconds(raw: str) -> float | None:
    """A finite delay in `raw` (at least 0), or None: `inf` or `nan` say no delay at all."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return max(0.0, value) if math.isfinite(value) else None


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """The delay a response asks for, in seconds, or None.

    Reads `retry-after-ms` (sent by OpenAI) and `Retry-After` as delta-seconds or an HTTP date.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None and (ms := parse_seconds(raw_ms)) is not None:
        return ms / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if (seconds := parse_seconds(raw)) is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def error_for_status(
    provider: ProviderName, response: httpx.Response, *, secret: Secret
) -> ProviderCallError:
    """The failure of a call answered with an error status (>= 400)."""
    status = response.status_code
    detail = provider_message(response, secret=secret)
    retry_after = parse_retry_after(response.headers)
    prefix = f"{provider.value}: HTTP {status}"
    if status == 429:
        hint = f"; retry after {retry_after:g}s" if retry_after is not None else ""
        return ProviderCallError(
            ErrorCode.RATE_LIMITED,
            f"{prefix} rate limited{hint}: {detail}",
            retry_after=retry_after,
        )
    if status == 408:
        return ProviderCallError(ErrorCode.TIMEOUT, f"{prefix} request timeout: {detail}")
    if status >= 500:  # includes Anthropic's 529 overloaded
        return ProviderCallError(
            ErrorCode.PROVIDER_UNAVAILABLE,
            f"{prefix} provider unavailable: {detail}",
            retry_after=retry_after,
        )
    kind = "authentication failed" if status in (401, 403) else "request rejected"
    return ProviderCallError(ErrorCode.PROVIDER_ERROR, f"{prefix} {kind}: {detail}")


def error_for_transport(
    provider: ProviderName, exc: httpx.RequestError | TimeoutError, *, timeout_s: float
) -> ProviderCallError:
    """The failure of a call that got no HTTP answer: a timeout or a connection problem."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return ProviderCallError(
            ErrorCode.TIMEOUT, f"{provider.value}: no answer within {timeout_s:g}s"
        )
    # The exception's class names the cause (ConnectError, RemoteProtocolError...); its text may
    # quote the request, so it is left out.
    return ProviderCallError(
        ErrorCode.PROVIDER_UNAVAILABLE,
        f"{provider.value}: cannot reach the provider ({type(exc).__name__})",
    )


def provider_message(response: httpx.Response, *, secret: Secret) -> str:
    """The provider's error text (`error.message` for OpenAI and Anthropic), short and masked."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message = ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("type") or "")
        elif isinstance(error, str):
            message = error
        elif isinstance(body.get("message"), str):
            message = body["message"]
    if not message:
        message = " ".join(text.split()) or response.reason_phrase or "no error message"
    return shorten(mask(message, secret))


def mask(text: str, secret: Secret) -> str:
    """`text` with every occurrence of the secret replaced."""
    value = secret.reveal()
    return text.replace(value, MASK) if value else text


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` cut to `limit` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
