"""Putting messages on the workers' queues from async routes, with no broker.

A Dramatiq broker's `enqueue` is synchronous and makes two Redis round trips per
message (the Lua dispatch, then the wake-up). Calling it from a route would
block the event loop, and hopping to a thread for it caps one ingest process
at a few hundred requests a second. The Enqueuer writes what Dramatiq's
dispatch script writes for an enqueue (the layout of core/queues.py, fenced by
workers/fence.py) with the async Redis client instead (one call of enqueue.lua
per batch), and batches: while one batch is in flight, the
messages that arrive meanwhile wait for the next, so an idle system sends at
once and a busy one sends many requests in one round trip. Each caller's future
is done only once Redis has its message.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import msgspec
import orjson
import redis.asyncio as aioredis
from dramatiq.middleware import Middleware
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import ConfigurationError
from core.logs import get_logger
from core.queues import MAX_WAKE_TOKENS, queue_key, wake_key

from .errors import ApiError

log = get_logger(__name__)

ENQUEUE_SCRIPT = Path(__file__).with_name("enqueue.lua")


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


@dataclass(slots=True)
class Pending:
    """A message encoded and waiting for its batch, and the future its sender awaits."""

    queue_name: str
    redis_message_id: str
    data: bytes
    also: Sequence[Command]
    #: A key that, once set, drops any later message with it; and its seconds to live.
    once: tuple[str, int] | None
    #: True once the message is on its queue, False when `once` dropped it.
    sent: asyncio.Future[bool]


def refuse_enqueue_hooks(middleware: Sequence[Middleware]) -> None:
    """Raise ConfigurationError, naming it, for a middleware that acts on an enqueue.

    The Enqueuer writes each message itself, as Dramatiq's dispatch script would, and
    runs no broker: a `before_enqueue` that changes a message, or an `after_enqueue`
    that reacts to one, would silently never run.
    """
    for each in middleware:
        hooks = [
            hook
            for hook in ("before_enqueue", "after_enqueue")
            if getattr(type(each), hook) is not getattr(Middleware, hook)
        ]
        if hooks:
            raise ConfigurationError(
                f"Middleware {type(each).__name__} defines {' and '.join(hooks)}, which the "
                "Enqueuer cannot run: it writes messages to Redis itself. Enqueue through "
                "a Dramatiq broker instead, or drop the middleware from ingest."
            )


class MessageIds:
    """Unique ids in uuid4's form without uuid4's cost, which reads the kernel's
    random pool for every id: random bits once per process, then a counter.

    Each call gives a message its two ids, its own and the one RedisBroker adds
    for each enqueue: the same counter under two random prefixes.
    """

    def __init__(self) -> None:
        self.message_prefix, self.redis_prefix = (
            # 8-4-4-4-12 like any uuid4, version and variant nibbles included.
            f"{random[:8]}-{random[8:12]}-4{random[13:16]}-{random[16:20]}-"
            for random in (uuid.uuid4().hex, uuid.uuid4().hex)
        )
        self.counter = itertools.count()

    def __call__(self) -> tuple[str, str]:
        suffix = f"{next(self.counter) & 0xFFFF_FFFF_FFFF:012x}"
        return self.message_prefix + suffix, self.redis_prefix + suffix


def encode(fields: dict[str, Any]) -> bytes:
    """A message's fields (Message.asdict()'s) as Dramatiq's JSONEncoder writes them.

    orjson writes the same compact JSON several times faster than the json module,
    and embeds an `orjson.Fragment` argument, JSON already checked, as it is; a
    msgspec model (a job of core/jobs.py) is written as msgspec encodes it.
    Values json could not encode (datetimes, dataclasses) raise TypeError here too.
    """
    data: bytes = orjson.dumps(
        fields,
        default=_encode_model,
        option=orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS,
    )
    return data


def _encode_model(value: Any) -> orjson.Fragment:
    # A job model (core/jobs.py) goes in as msgspec writes it: the JSON its actor reads.
    if isinstance(value, msgspec.Struct):
        return orjson.Fragment(msgspec.json.encode(value))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


class Enqueuer:
    """Sends messages to the broker's queues from the event loop, in batches."""

    def __init__(self, redis: aioredis.Redis, middleware: Sequence[Middleware] = ()) -> None:
        if type(dramatiq.get_encoder()) is not dramatiq.JSONEncoder:
            raise ConfigurationError(
                "The Enqueuer writes messages as JSON; Dramatiq's encoder is set to "
                f"{type(dramatiq.get_encoder()).__name__}, which workers could not read them with."
            )
        refuse_enqueue_hooks(middleware)
        self.redis = redis
        self.pending: list[Pending] = []
        self.sending: asyncio.Task[None] | None = None
        self.new_ids = MessageIds()
        self.script = redis.register_script(ENQUEUE_SCRIPT.read_text())

    def send(
        self,
        queue_name: str,
        actor_name: str,
        *args: Any,
        also: Sequence[Command] = (),
        once: tuple[str, int] | None = None,
    ) -> asyncio.Future[bool]:
        """Queue a message: await the result, which is True once the message is on its
        queue and raises QueueUnavailable if Redis failed to take it.

        With `once=(key, seconds)`, the message is queued only if no message with that
        key was queued in the last `seconds`, checked and set in the same atomic step;
        the result is False for one dropped so.

        A future rather than a coroutine: the route that awaits it resumes through
        one frame fewer when Redis answers.

        An argument may be an `orjson.Fragment`: JSON text the actor receives decoded.
        The commands `also` are written in the same atomic script call, just before
        the message: what the job's consumers need to find is there when they run.
        """
        message_id, redis_message_id = self.new_ids()
        # What Message(...).asdict() holds, in its order, with what RedisBroker.enqueue
        # adds: an id of its own for each enqueue.
        data = encode(
            {
                "queue_name": queue_name,
                "actor_name": actor_name,
                "args": args,
                "kwargs": {},
                "options": {"redis_message_id": redis_message_id},
                "message_id": message_id,
                "message_timestamp": int(time.time() * 1000),
            }
        )
        pending = Pending(
            queue_name,
            redis_message_id,
            data,
            also,
            once,
            asyncio.get_running_loop().create_future(),
        )
        self.pending.append(pending)
        if self.sending is None:
            self.sending = asyncio.create_task(self._drain())
        return pending.sent

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await self._send(batch)
        finally:
            self.sending = None

    async def _send(self, batch: list[Pending]) -> None:
        try:
            queued = await self._write(batch)
        except (RedisConnectionError, RedisTimeoutError) as error:
            log.warning("enqueue_failed", error=type(error).__name__, messages=len(batch))
            self._fail(batch, QueueUnavailable())
            return
        except Exception as error:
            self._fail(batch, error)
            return
        for each, result in zip(batch, queued, strict=True):
            if not each.sent.done():
                each.sent.set_result(result)

    @staticmethod
    def _fail(batch: list[Pending], error: Exception) -> None:
        for each in batch:
            if not each.sent.done():
                each.sent.set_exception(error)

    async def _write(self, batch: list[Pending]) -> list[bool]:
        """Write the batch with one call of enqueue.lua: one round trip and one reply,
        atomic like a MULTI/EXEC, whose six replies cost ingest more to read. Returns,
        for each message of the batch, whether it was queued."""
        commands = [command for each in batch for command in each.also]
        words: list[str | bytes | int] = [MAX_WAKE_TOKENS, len(commands)]
        for command in commands:
            words += (len(command), *command)
        by_queue: dict[str, list[Pending]] = {}
        for each in batch:
            by_queue.setdefault(each.queue_name, []).append(each)
        order: list[Pending] = []
        for queue_name, queued in by_queue.items():
            words += (queue_key(queue_name), wake_key(queue_name), len(queued))
            for each in queued:
                key, ttl = each.once or ("", 0)
                words += (each.redis_message_id, each.data, key, ttl)
            order += queued
        replies = await self.script(args=words)
        queued_by_id = {id(each): bool(r) for each, r in zip(order, replies, strict=True)}
        return [queued_by_id[id(each)] for each in batch]
