"""Dramatiq's Redis broker, waking idle consumers on every enqueue.

These classes extend Dramatiq's Redis adapter through its private parts
(`_RedisConsumer`, `RedisBroker._dispatch` and its dispatch script's argument
list): workers/fence.py records the Dramatiq code they were written against,
and tests/test_fence.py fails when an installed Dramatiq differs.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from core.queues import MAX_WAKE_TOKENS, wake_key

#: A worker that sent no heartbeat for this long is presumed dead and its
#: in-flight messages go back on their queue (Dramatiq's default is 60 s).
HEARTBEAT_TIMEOUT_MS = 15_000


class WakingConsumer(_RedisConsumer):
    """A Redis consumer that sleeps on BLPOP instead of time.sleep.

    Dramatiq's consumer backs off up to the worker timeout when its queue is
    empty, which adds up to a second to the first message after a quiet spell.
    This one blocks on a wake-up list that every enqueue pushes to, so it runs
    a new message within a round trip, and costs nothing while idle.
    """

    def __init__(
        self, broker: WakingRedisBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        super().__init__(broker, queue_name, prefetch, 0)
        self.idle_timeout_s = max(timeout, 1) / 1000
        self.wake = wake_key(queue_name)

        # Acks waiting to be sent, and whether a thread is sending them (see ack).
        self.ack_lock = threading.Lock()
        self.pending_acks: list[str] = []
        self.acking = False

    def ack(self, message: MessageProxy) -> None:
        """Acknowledge a processed message, sharing one Redis round trip with others.

        Dramatiq sends one EVALSHA per ack from the worker thread that ran the
        message. Here the first thread to ack sends, in one pipeline, every
        ack that comes in meanwhile, and keeps going until none is left; the
        others return at once. An ack is only ever sent late, never early: a
        process that dies before sending it has its message redelivered, as
        it would have had it died just before acking.
        """
        self.queued_message_ids.discard(message.message_id)
        with self.ack_lock:
            self.pending_acks.append(message.options["redis_message_id"])
            if self.acking:
                return
            self.acking = True
        self.send_pending_acks()

    def send_pending_acks(self) -> None:
        batch: list[str] = []
        try:
            while True:
                with self.ack_lock:
                    batch, self.pending_acks = self.pending_acks, []
                    if not batch:
                        self.acking = False
                        return
                self.broker.ack_many(self.queue_name, batch)
        except BaseException as error:
            with self.ack_lock:
                # Kept for the retry Dramatiq makes of a failed ack.
                self.pending_acks[:0] = batch
                self.acking = False
            if isinstance(error, redis.ConnectionError):
                raise ConnectionClosed(error) from None
            raise

    def close(self) -> None:
        with self.ack_lock:
            leftover = bool(self.pending_acks) and not self.acking
            if leftover:
                self.acking = True
        if leftover:
            self.send_pending_acks()
        super().close()

    def __next__(self) -> Any:
        busy = self.outstanding_message_count >= self.prefetch
        message = super().__next__()
        if message is None:
            if busy:
                # Nothing was fetched because every slot is taken: wait for one.
                time.sleep(0.002)
            else:
                self.broker.client.blpop([self.wake], timeout=self.idle_timeout_s)
        return message


class WakingRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, waking an idle consumer on every enqueue."""

    #: Seconds between queue maintenance runs, which is when the messages of a
    #: dead worker go back on their queue. Dramatiq leaves maintenance to
    #: chance (one command in a thousand); a clock bounds the wait instead.
    MAINTENANCE_INTERVAL_S = 5.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._last_maintenance: dict[str, float] = {}

    @property
    def consumer_class(self) -> type[WakingConsumer]:
        return WakingConsumer

    def _dispatch(self, command: str) -> Any:
        # Dramatiq's own _dispatch, except that maintenance is due by the clock,
        # per queue, rather than by chance: maintenance is what puts a dead
        # worker's messages back, so its period bounds how long they wait.
        dispatch = self.scripts["dispatch"]

        def do_dispatch(queue_name: str, *args: Any) -> Any:
            return dispatch(
                args=self._dispatch_args(command, queue_name, *args),
                keys=[self.namespace],
            )

        return do_dispatch

    def _dispatch_args(self, command: str, queue_name: str, *args: Any) -> list[Any]:
        """The arguments of Dramatiq's dispatch script for one command."""
        return [
            command,
            current_millis(),
            queue_name,
            self.broker_id,
            self.heartbeat_timeout,
            self.dead_message_ttl,
            self._maintenance_due(command, queue_name),
            self._max_unpack_size(),
            *args,
        ]

    def ack_many(self, queue_name: str, message_ids: list[str]) -> None:
        """Ack these messages in one round trip: Dramatiq's ack command for each, pipelined."""
        dispatch = self.scripts["dispatch"]
        with self.client.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                dispatch(
                    args=self._dispatch_args("ack", queue_name, message_id),
                    keys=[self.namespace],
                    client=pipe,
                )
            pipe.execute()

    def _maintenance_due(self, command: str, queue_name: str) -> int:
        # Only fetches carry it: every idle consumer fetches at least once a
        # worker timeout, and a fetch never runs inside a caller's request.
        if command != "fetch":
            return 0
        now = time.monotonic()
        if now - self._last_maintenance.get(queue_name, 0.0) < self.MAINTENANCE_INTERVAL_S:
            return 0
        self._last_maintenance[queue_name] = now
        return 1

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        enqueued = super().enqueue(message, delay=delay)
        key = wake_key(enqueued.queue_name)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.lpush(key, 1)
            pipe.ltrim(key, 0, MAX_WAKE_TOKENS - 1)
            pipe.execute()
        return enqueued
