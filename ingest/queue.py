"""Putting messages on the broker from async routes without blocking the event loop."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from .errors import ApiError


class QueueUnavailable(ApiError):
    """Redis did not take the message; the caller should retry."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "queue_unavailable",
            "The job queue is unavailable; nothing was accepted. Retry shortly.",
            headers={"Retry-After": "1"},
        )


async def enqueue(
    broker: RedisBroker, queue_name: str, actor_name: str, *args: Any, **options: Any
) -> Message[Any]:
    """Send one message; raise QueueUnavailable when Redis cannot take it.

    The redis client is synchronous, so the call runs on a worker thread: a
    Redis stall then delays this request only, never the event loop.
    """
    message: Message[Any] = Message(
        queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options=options
    )
    try:
        enqueued: Message[Any] = await anyio.to_thread.run_sync(broker.enqueue, message)
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise QueueUnavailable() from error
    return enqueued
