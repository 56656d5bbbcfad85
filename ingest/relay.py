"""Where a chat's stream is relayed: its Redis stream's events, as the worker publishes
them, for the routes that answer with them (ingest/sse.py's native SSE and
ingest/completions.py's Chat Completions chunks) to write in their own shape."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Final

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import streams

#: How long one XREAD waits before the relay yields a keepalive. Well under the Redis
#: client's 10 s socket timeout and the 30-60 s idle timeouts of common proxies.
KEEPALIVE_MS: Final = 5000
#: Whole seconds one relay may last; an SSE client reconnects with Last-Event-ID.
MAX_STREAM_S: Final = 3600

EXPIRED: Final = streams.StreamEvent(
    "",
    streams.ERROR,
    {"code": "stream_expired", "message": "The chat's stream expired unfinished."},
)
UNAVAILABLE: Final = streams.StreamEvent(
    "",
    streams.ERROR,
    {"code": "stream_unavailable", "message": "Redis went away; reconnect to resume."},
)


async def chat_events(
    client: aioredis.Redis, job_id: str, after: str = "0-0"
) -> AsyncIterator[streams.StreamEvent | None]:
    """The chat's events after `after`, up to its terminal one; None while none comes for
    KEEPALIVE_MS (time for a keepalive). An event of the relay's own, with no id, ends it
    when the stream expired unfinished or Redis went away."""
    deadline = time.monotonic() + MAX_STREAM_S
    while time.monotonic() < deadline:
        try:
            events = await streams.read_events(
                client, job_id, after_id=after, block_ms=KEEPALIVE_MS, count=256
            )
            if not events and not await client.exists(streams.job_key(job_id)):
                yield EXPIRED
                return
        except (RedisConnectionError, RedisTimeoutError):
            yield UNAVAILABLE
            return
        if not events:
            yield None
            continue
        for event in events:
            yield event
            after = event.id
            if event.terminal:
                return
