"""Chat requests per user per minute (AIWRAP_USER_REQUESTS_PER_MINUTE; 0 turns it off).

A fixed window of one UTC minute, counted in Redis, so every ingest process shares it:
the request that finds the window full is a 429 whose Retry-After is the seconds left in
it. A refused request still counts, so a client that hammers stays refused until the
window turns."""

from __future__ import annotations

import math
import time
from typing import Final

import redis.asyncio as aioredis

from core.queues import NAMESPACE

from .enqueue import QueueUnavailable
from .errors import ApiError
from .refusals import LIMITED
from .requests import redis_errors

WINDOW_S: Final = 60


class TooManyRequests(ApiError):
    def __init__(self, per_minute: int, retry_after: int) -> None:
        super().__init__(
            429,
            "rate_limited",
            f"This user sent {per_minute} chat requests this minute, as many as allowed; "
            f"retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


def window_key(user_id: str, window: int) -> str:
    return f"{NAMESPACE}:rate:{user_id}:{window}"


async def count_request(client: aioredis.Redis, user_id: str, per_minute: int) -> None:
    """Count one chat request of `user_id` in this minute, or raise TooManyRequests."""
    if per_minute == 0:
        return
    now = time.time()
    window = int(now // WINDOW_S)
    key = window_key(user_id, window)
    # The count is the first step of queueing a chat: Redis down, the queue is down.
    with redis_errors(QueueUnavailable):
        async with client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 2 * WINDOW_S)
            sent, _ = await pipe.execute()
    if sent > per_minute:
        LIMITED.labels("requests_per_minute").inc()
        raise TooManyRequests(per_minute, max(1, math.ceil((window + 1) * WINDOW_S - now)))
