"""Reply channels read in this process: results stored here go straight to their reader.

Queue-level behaviour on both backends, then the end-to-end effect on Redis: a streaming call's
results never touch its reply channel when the same replica does the work, and still arrive when
another replica does (tests/test_replicas.py kills one of two replicas under load).
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from cj_client import ComparisonOutcome, LpsClient
from lps_server.app import LpsApp
from lps_server.core.domain import ComparisonResult, ProcessingMode
from lps_server.queue.base import QueueBackend
from lps_server.queue.redis_keys import QueueKeys
from lps_server.queue.replies import LocalReplies
from tests.helpers import running_app, submission, submit_all
from tests.queue_support import T0, judged, make_queued


async def test_a_reply_channel_read_here_gets_stored_results_instead_of_the_channel(
    queue: QueueBackend,
) -> None:
    mine = make_queued("r1", channel="public", reply_to="reply:a")
    other = make_queued("r2", reply_to="reply:b")
    await queue.submit([mine, other])
    got: list[ComparisonResult] = []
    with queue.reply_here("reply:a", got.append):
        assert await queue.complete([(mine, judged(mine)), (other, judged(other))]) == [True, True]
        assert got == [judged(mine)]
        # Only the first completion is handed over, as only the first is published.
        assert await queue.complete([(mine, judged(mine, now=T0 + 9))]) == [False]
        assert got == [judged(mine)]
    assert await queue.read_channel("reply:a", cursor="", timeout=0) == []
    # The other channels are published as before.
    public = await queue.read_channel("public", cursor="", timeout=0)
    assert [e.result.request_id for e in public] == ["r1"]
    elsewhere = await queue.read_channel("reply:b", cursor="", timeout=0)
    assert [e.result.request_id for e in elsewhere] == ["r2"]
    assert (await queue.get("r1")) == judged(mine)


async def test_once_the_reader_is_gone_results_go_onto_the_channel(queue: QueueBackend) -> None:
    queued = make_queued("r1", reply_to="reply:a")
    await queue.submit([queued])
    got: list[ComparisonResult] = []
    with queue.reply_here("reply:a", got.append):
        pass
    await queue.complete([(queued, judged(queued))])
    assert got == []
    entries = await queue.read_channel("reply:a", cursor="", timeout=0)
    assert [e.result.request_id for e in entries] == ["r1"]


def test_a_reply_channel_has_one_reader() -> None:
    replies = LocalReplies()
    with replies.open("reply:a", print):
        with pytest.raises(ValueError, match="already has a reader"):
            replies.open("reply:a", print).__enter__()
        assert replies.reader("reply:a") is print
    assert replies.reader("reply:a") is None
    assert replies.reader("") is None


async def test_a_streaming_call_served_here_writes_no_reply_channel(redis_url: str) -> None:
    prefix = "replies-e2e"
    async with running_app(
        queue_backend="redis",
        redis_url=redis_url,
        redis_prefix=prefix,
        queue_processing_mode=ProcessingMode.SERIAL_BUNDLE,
    ) as app:
        results = await _submit(app, 12)
        assert {r.status for r in results} == {"completed"}
        observer = aioredis.Redis.from_url(redis_url)
        try:
            channels = [k async for k in observer.scan_iter(match=QueueKeys(prefix).channel("*"))]
        finally:
            await observer.aclose()
        assert channels == []


async def _submit(app: LpsApp, n: int) -> list[ComparisonOutcome]:
    async with LpsClient(target=f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
        return await submit_all(client, [submission(i) for i in range(n)])
