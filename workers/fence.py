"""What aiwrap copies or extends of Dramatiq's internals, and the versions it was written for.

ingest/enqueue.lua writes messages the way Dramatiq's Redis dispatch script does, and
workers/consumer.py and workers/middleware.py extend private parts of Dramatiq's Redis
broker and asyncio support. None of that is Dramatiq's public API, so a release may
change it without notice. Each entry below is the digest of the Dramatiq source the
code was written against; `drift()` says which no longer match the installed Dramatiq,
and tests/test_fence.py fails on any. pyproject.toml pins `dramatiq==2.2.*`, so an
upgrade is a decision: review each drifted part against its copy, then update the digest.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import dramatiq
from dramatiq.asyncio import EventLoopThread
from dramatiq.brokers import redis as redis_broker
from dramatiq.middleware import AsyncIO


def _file(name: str) -> Callable[[], str]:
    return lambda: (Path(redis_broker.__file__).with_name("redis") / name).read_text()


def _source(obj: object) -> Callable[[], str]:
    return lambda: inspect.getsource(obj)  # type: ignore[arg-type]


def _message_fields() -> str:
    return ",".join(f.name for f in fields(dramatiq.Message))


#: (what, where aiwrap relies on it, how to read it, sha256 of what it read).
FENCED: tuple[tuple[str, str, Callable[[], str], str], ...] = (
    (
        "brokers/redis/dispatch.lua",
        "ingest/enqueue.lua (enqueue's keys and layout), core/queues.py (depth keys), "
        "workers/consumer.py (the script's arguments)",
        _file("dispatch.lua"),
        "ba4d872e4fb204ebc3f73ca4719265a9946d70e847856c125314f01a8c90540c",
    ),
    (
        "RedisBroker._dispatch",
        "workers/consumer.py: WakingRedisBroker._dispatch and _dispatch_args",
        _source(redis_broker.RedisBroker._dispatch),
        "ee77793d07f17bbefbffb5da1da34b5bcce1d5d7eb78eb793a6863eb397fd3d5",
    ),
    (
        "RedisBroker.enqueue",
        "ingest/enqueue.py: the redis_message_id option each enqueue adds",
        _source(redis_broker.RedisBroker.enqueue),
        "e1590deaae2f786a112a39bbea6003e910489c7e69f3bc227fca16a2d898e9ee",
    ),
    (
        "_RedisConsumer",
        "workers/consumer.py: WakingConsumer (ack, close, __next__, prefetch counts)",
        _source(redis_broker._RedisConsumer),
        "6385e191ba400ad449a10b533b49eec9a9a354f329f9e79877084df9604a8407",
    ),
    (
        "Message fields",
        "ingest/enqueue.py: the fields of a message, in Message.asdict()'s order",
        _message_fields,
        "ee928ec3aaab01363cf1488420a0ea46dde0b1ef99df7d1feadbc553b2622717",
    ),
    (
        "Actor.__call__",
        "core/logs.py: the debug line with an actor's arguments, which ACTOR_RECEIVED hides",
        _source(dramatiq.Actor.__call__),
        "4301618bc7083fc46d989867999305dafffc4f9d6e3308d2936c703c821be539",
    ),
    (
        "AsyncIO.before_worker_boot",
        "workers/middleware.py: UvloopAsyncIO.before_worker_boot",
        _source(AsyncIO.before_worker_boot),
        "9e4e95eda038591a3c7d743e5948d294eeb58f79a42c9ddc6a4579fd82845988",
    ),
    (
        "EventLoopThread.__init__",
        "workers/middleware.py: the loop attribute UvloopAsyncIO replaces",
        _source(EventLoopThread.__init__),
        "6a2fbe0b6cb63c9533916c6eb5d547f698a0b389213490d1bbf85463dca5a5bd",
    ),
)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def drift() -> list[str]:
    """One line for each fenced part of the installed Dramatiq that is not as recorded."""
    return [
        f"Dramatiq {dramatiq.__version__}: {what} changed (sha256 {digest(read())}); "
        f"review {where}."
        for what, where, read, recorded in FENCED
        if digest(read()) != recorded
    ]
