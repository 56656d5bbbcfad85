"""Putting messages on the broker's queues from async routes.

The broker's own `enqueue` is synchronous and makes two Redis round trips per
message (the Lua dispatch, then the wake-up). Calling it from a route would
block the event loop, and hopping to a thread for it caps one ingest process
at a few hundred requests a second. The Enqueuer sends the same dispatch and
wake-up with the async Redis client instead, and batches: while one pipeline
is in flight, the messages that arrive meanwhile wait for the next, so an idle
system sends at once and a busy one sends many requests in one round trip.
Each caller returns only once Redis has its message.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis
from dramatiq import Message
from dramatiq.common import current_millis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from workers.broker import WakingRedisBroker, wake_key
from workers.logs import get_logger

from .errors import ApiError

log = get_logger(__name__)


class QueueUnavailable(ApiError):
    """Redis did not take the message; the caller should retry."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "queue_unavailable",
            "The job queue is unavailable; nothing was accepted. Retry shortly.",
            headers={"Retry-After": "1"},
        )


Pending = tuple[Message[Any], asyncio.Future[None]]


class Enqueuer:
    """Sends messages to the broker's queues from the event loop, in batches."""

    def __init__(self, broker: WakingRedisBroker, redis: aioredis.Redis) -> None:
        self.broker = broker
        self.redis = redis
        self.pending: list[Pending] = []
        self.sending: asyncio.Task[None] | None = None

    async def send(self, queue_name: str, actor_name: str, *args: Any) -> Message[Any]:
        """Return once the message is on its queue; raise QueueUnavailable if Redis fails."""
        message: Message[Any] = Message(
            queue_name=queue_name,
            actor_name=actor_name,
            args=args,
            kwargs={},
            # What RedisBroker.enqueue adds: an id of its own for each enqueue.
            options={"redis_message_id": str(uuid.uuid4())},
        )
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((message, sent))
        if self.sending is None:
            self.sending = asyncio.create_task(self._drain())
        await sent
        return message

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await self._send(batch)
        finally:
            self.sending = None

    async def _send(self, batch: list[Pending]) -> None:
        try:
            for message, _ in batch:
                self.broker.emit_before("enqueue", message, None)
            await self._pipeline([message for message, _ in batch])
        except (RedisConnectionError, RedisTimeoutError) as error:
            log.warning("enqueue_failed", error=type(error).__name__, messages=len(batch))
            self._fail(batch, QueueUnavailable())
            return
        except Exception as error:
            self._fail(batch, error)
            return
        for message, sent in batch:
            self.broker.emit_after("enqueue", message, None)
            if not sent.done():
                sent.set_result(None)

    @staticmethod
    def _fail(batch: list[Pending], error: Exception) -> None:
        for _, sent in batch:
            if not sent.done():
                sent.set_exception(error)

    async def _pipeline(self, messages: list[Message[Any]]) -> None:
        broker = self.broker
        dispatch = broker.scripts["dispatch"]
        now = current_millis()
        queues = {message.queue_name for message in messages}
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for message in messages:
                    # The arguments of WakingRedisBroker's dispatch for "enqueue".
                    pipe.evalsha(
                        dispatch.sha,
                        1,
                        broker.namespace,
                        "enqueue",
                        now,
                        message.queue_name,
                        broker.broker_id,
                        broker.heartbeat_timeout,
                        broker.dead_message_ttl,
                        0,
                        broker._max_unpack_size(),  # type: ignore[no-untyped-call]
                        message.options["redis_message_id"],
                        message.encode(),
                    )
                for queue_name in queues:
                    count = sum(1 for m in messages if m.queue_name == queue_name)
                    wake = wake_key(broker.namespace, queue_name)
                    pipe.lpush(wake, *([1] * min(count, WakingRedisBroker.MAX_WAKE_TOKENS)))
                    pipe.ltrim(wake, 0, WakingRedisBroker.MAX_WAKE_TOKENS - 1)
                try:
                    await pipe.execute()
                    return
                except NoScriptError:
                    # A restarted Redis has forgotten the script: load it, then again.
                    # Every dispatch in the pipeline failed alike, so none is doubled.
                    if attempt:
                        raise
                    await self.redis.script_load(dispatch.script)
