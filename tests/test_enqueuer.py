"""The Enqueuer: what ingest writes to Redis is what Dramatiq's workers read."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
import redis as redis_lib
import redis.asyncio as aioredis
from dramatiq import Message

from core.queues import MAX_WAKE_TOKENS, wake_key
from core.settings import Settings
from devstack.embedded import EmbeddedRedis
from ingest.enqueue import Enqueuer, QueueUnavailable
from workers.consumer import WakingRedisBroker

QUEUE = "enqueuer_test"


def queued(redis: redis_lib.Redis, broker: WakingRedisBroker) -> list[Message[object]]:
    """The messages on QUEUE, in queue order, as a worker would decode them."""
    key = f"{broker.namespace}:{QUEUE}"
    ids = redis.lrange(key, 0, -1)
    return [Message.decode(redis.hget(f"{key}.msgs", each)) for each in ids]  # type: ignore[arg-type]


async def send_all(broker: WakingRedisBroker, url: str, count: int) -> list[object]:
    client = aioredis.Redis.from_url(url)
    try:
        enqueuer = Enqueuer(client)
        return await asyncio.gather(
            *(
                enqueuer.send(QUEUE, "some_actor", f"svix_{i}", orjson.Fragment(b'{"n": %d}' % i))
                for i in range(count)
            ),
            return_exceptions=True,
        )
    finally:
        await client.aclose()


def test_a_batch_larger_than_one_script_slice_lands_whole_and_in_order(
    broker: WakingRedisBroker, redis: redis_lib.Redis, redis_url: str
) -> None:
    broker.flush(QUEUE)
    redis.delete(wake_key(QUEUE))
    results = asyncio.run(send_all(broker, redis_url, 1_200))  # one batch: all sent at once
    assert results == [True] * 1_200  # each one queued
    messages = queued(redis, broker)
    assert [m.args for m in messages] == [(f"svix_{i}", {"n": i}) for i in range(1_200)]
    assert {m.queue_name for m in messages} == {QUEUE}
    assert len({m.message_id for m in messages}) == 1_200
    assert all(m.options["redis_message_id"] != m.message_id for m in messages)
    wake = redis.lrange(wake_key(QUEUE), 0, -1)
    assert wake == [b"1"] * MAX_WAKE_TOKENS


def test_commands_sent_with_a_message_land_with_it(
    broker: WakingRedisBroker, redis: redis_lib.Redis, redis_url: str
) -> None:
    broker.flush(QUEUE)
    record = f"enqueuer_test:{uuid.uuid4()}"

    async def send() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await Enqueuer(client).send(
                QUEUE,
                "some_actor",
                {"job": 1},
                also=[("HSET", record, "status", "queued", "n", 7), ("EXPIRE", record, 60)],
            )
        finally:
            await client.aclose()

    asyncio.run(send())
    assert redis.hgetall(record) == {b"status": b"queued", b"n": b"7"}
    assert 0 < redis.ttl(record) <= 60
    [message] = queued(redis, broker)
    assert message.args == ({"job": 1},)


def test_every_sender_hears_when_redis_is_down(
    broker: WakingRedisBroker, private_redis: EmbeddedRedis
) -> None:
    url = private_redis.url
    private_redis.stop()
    results = asyncio.run(send_all(broker, url, 20))
    assert all(isinstance(each, QueueUnavailable) for each in results)


def test_a_message_json_cannot_encode_is_refused_before_it_is_queued(
    broker: WakingRedisBroker, redis_url: str, settings: Settings
) -> None:
    async def send() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await Enqueuer(client).send(QUEUE, "some_actor", {1, 2})
        finally:
            await client.aclose()

    with pytest.raises(TypeError):
        asyncio.run(send())


def test_a_message_sent_once_is_queued_once_however_often_it_is_sent(
    broker: WakingRedisBroker, redis: redis_lib.Redis, redis_url: str
) -> None:
    broker.flush(QUEUE)
    key = f"aiwrap:test:once:{uuid.uuid4().hex}"

    async def go() -> list[bool]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            enqueuer = Enqueuer(client)
            # In one batch, then in a batch of its own: each dropped but the first.
            together = await asyncio.gather(
                *(enqueuer.send(QUEUE, "some_actor", n, once=(key, 60)) for n in range(5))
            )
            return [*together, await enqueuer.send(QUEUE, "some_actor", 5, once=(key, 60))]
        finally:
            await client.aclose()

    assert asyncio.run(go()) == [True, False, False, False, False, False]
    assert [m.args for m in queued(redis, broker)] == [(0,)]
    assert 0 < redis.ttl(key) <= 60
