"""Putting messages on the broker's queues from async routes.

The broker's own `enqueue` is synchronous and makes two Redis round trips per
message (the Lua dispatch, then the wake-up). Calling it from a route would
block the event loop, and hopping to a thread for it caps one ingest process
at a few hundred requests a second. The Enqueuer writes what Dramatiq's
dispatch script writes for an enqueue with the async Redis client instead, and
batches: while one batch is in flight, the messages that arrive meanwhile wait
for the next, so an idle system sends at once and a busy one sends many
requests in one round trip. Each caller returns only once Redis has its message.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Sequence
from typing import Any

import dramatiq
import orjson
import redis.asyncio as aioredis
from dramatiq import Message
from dramatiq.middleware import Middleware
from redis.exceptions import ConnectionError as RedisConnectionError
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


#: A Redis command as its words, e.g. ("EXPIRE", key, 60).
Command = tuple[str | bytes | int, ...]
Pending = tuple[Message[Any], Sequence[Command], asyncio.Future[None]]


def _hooks_enqueue(broker: WakingRedisBroker) -> bool:
    """Whether any of the broker's middleware does something before or after an enqueue."""
    return any(
        getattr(type(each), hook) is not getattr(Middleware, hook)
        for each in broker.middleware
        for hook in ("before_enqueue", "after_enqueue")
    )


class MessageIds:
    """Unique ids in uuid4's form without uuid4's cost, which reads the kernel's
    random pool for every id: random bits once per process, then a counter."""

    def __init__(self) -> None:
        random = uuid.uuid4().hex
        # 8-4-4-4-12 like any uuid4, version and variant nibbles included.
        self.prefix = f"{random[:8]}-{random[8:12]}-4{random[13:16]}-{random[16:20]}-"
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFF_FFFF_FFFF:012x}"


def encode(message: Message[Any]) -> bytes:
    """The message as the broker's encoder writes it."""
    if type(dramatiq.get_encoder()) is dramatiq.JSONEncoder:
        # The same JSON, several times faster than the json module for an event's size.
        try:
            data: bytes = orjson.dumps(
                message.asdict(),
                option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS,
            )
            return data
        except TypeError:  # e.g. a non-str key or a datetime: the encoder knows what to do
            pass
    return message.encode()


class Enqueuer:
    """Sends messages to the broker's queues from the event loop, in batches."""

    def __init__(self, broker: WakingRedisBroker, redis: aioredis.Redis) -> None:
        self.broker = broker
        self.redis = redis
        self.pending: list[Pending] = []
        self.sending: asyncio.Task[None] | None = None
        # Dramatiq's own middleware has no enqueue hooks: skip the two calls
        # per middleware per message that would find that out every time.
        self.emits = _hooks_enqueue(broker)
        self.new_id = MessageIds()

    async def send(
        self, queue_name: str, actor_name: str, *args: Any, also: Sequence[Command] = ()
    ) -> Message[Any]:
        """Return once the message is on its queue; raise QueueUnavailable if Redis fails.

        The commands `also` are written in the same transaction, just before the
        message: what the job's consumers need to find is there when they run.
        """
        message: Message[Any] = Message(
            queue_name=queue_name,
            actor_name=actor_name,
            args=args,
            kwargs={},
            # What RedisBroker.enqueue adds: an id of its own for each enqueue.
            options={"redis_message_id": self.new_id()},
            message_id=self.new_id(),
        )
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((message, also, sent))
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
            if self.emits:
                for message, _, _ in batch:
                    self.broker.emit_before("enqueue", message, None)
            await self._write(batch)
        except (RedisConnectionError, RedisTimeoutError) as error:
            log.warning("enqueue_failed", error=type(error).__name__, messages=len(batch))
            self._fail(batch, QueueUnavailable())
            return
        except Exception as error:
            self._fail(batch, error)
            return
        for message, _, sent in batch:
            if self.emits:
                self.broker.emit_after("enqueue", message, None)
            if not sent.done():
                sent.set_result(None)

    @staticmethod
    def _fail(batch: list[Pending], error: Exception) -> None:
        for _, _, sent in batch:
            if not sent.done():
                sent.set_exception(error)

    async def _write(self, batch: list[Pending]) -> None:
        """Write what dispatch.lua's "enqueue" writes, for every message, in one transaction.

        Per queue that is the message data in the `.msgs` hash under its
        redis_message_id and that id at the tail of the queue's list, then
        the wake-up for idle consumers. Plain commands rather than one script
        call per message: four commands a queue, whatever the batch size.
        """
        by_queue: dict[str, dict[str, bytes]] = {}
        for message, _, _ in batch:
            by_queue.setdefault(message.queue_name, {})[message.options["redis_message_id"]] = (
                encode(message)
            )
        namespace = self.broker.namespace
        tokens = WakingRedisBroker.MAX_WAKE_TOKENS
        async with self.redis.pipeline(transaction=True) as pipe:
            for _, also, _ in batch:
                for command in also:
                    pipe.execute_command(*command)
            for queue_name, data in by_queue.items():
                queue_key = f"{namespace}:{queue_name}"
                pipe.hset(f"{queue_key}.msgs", mapping=data)  # type: ignore[arg-type]
                pipe.rpush(queue_key, *data)
                wake = wake_key(namespace, queue_name)
                pipe.lpush(wake, *([1] * min(len(data), tokens)))
                pipe.ltrim(wake, 0, tokens - 1)
            await pipe.execute()
