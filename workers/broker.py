"""The one place the Dramatiq broker and its middleware are built.

Two queues: `identity` for Clerk events and `chat` for model calls, so a slow
model never delays identity sync. Workers wake as soon as a message is
enqueued instead of polling Redis with a growing sleep (see WakingConsumer).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import dramatiq
import redis
import structlog
import uvloop
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message
from dramatiq.middleware import AsyncIO, CurrentMessage, Middleware

from .logs import get_logger
from .runtime import Runtime
from .settings import Settings

IDENTITY_QUEUE = "identity"
CHAT_QUEUE = "chat"
QUEUES = (IDENTITY_QUEUE, CHAT_QUEUE)

#: Redis key prefix for every key the broker writes.
NAMESPACE = "aiwrap"

#: A worker that sent no heartbeat for this long is presumed dead and its
#: in-flight messages go back on their queue (Dramatiq's default is 60 s).
HEARTBEAT_TIMEOUT_MS = 15_000

#: Seconds before a Redis connect or reply counts as failed; idle consumers
#: block on BLPOP for at most the worker timeout, well inside this.
REDIS_CONNECT_TIMEOUT_S = 5
REDIS_SOCKET_TIMEOUT_S = 10

log = get_logger(__name__)


def wake_key(namespace: str, queue_name: str) -> str:
    """The Redis list a consumer blocks on while its queue is empty."""
    return f"{namespace}:{queue_name}.wake"


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
        self.wake = wake_key(broker.namespace, queue_name)

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

    #: Wake-up tokens kept per queue; more than the consumers waiting is waste.
    MAX_WAKE_TOKENS = 64

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
        key = wake_key(self.namespace, enqueued.queue_name)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.lpush(key, 1)
            pipe.ltrim(key, 0, self.MAX_WAKE_TOKENS - 1)
            pipe.execute()
        return enqueued


class UvloopAsyncIO(AsyncIO):
    """Dramatiq's AsyncIO middleware, with a uvloop event loop.

    Every piece of every chat a process relays goes through this one loop: a
    read from the model, a write to Redis. asyncio's own loop spends a sixth of
    the process's time in socket writes and selector calls; uvloop does them in C.
    """

    def before_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        # The loop thread calls asyncio.new_event_loop(): that asks the policy.
        policy = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        try:
            super().before_worker_boot(broker, worker)
        finally:
            asyncio.set_event_loop_policy(policy)


class RuntimeMiddleware(Middleware):
    """Opens the worker's Runtime on its event loop as it boots; closes it at shutdown."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def before_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        # Before the worker threads start, so no message finds it closed; after
        # AsyncIO's own before_worker_boot (listed earlier), so the loop runs.
        loop = get_event_loop_thread()
        assert loop is not None, "the AsyncIO middleware must be listed before this one"
        loop.run_coroutine(self.runtime.open())
        log.info("worker_runtime_opened", queues=sorted(worker.consumers))

    def after_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        # After the worker threads have finished their messages (a drain needs
        # the pool), and before AsyncIO stops the loop: Dramatiq runs "after"
        # hooks in reverse order, and this middleware is listed after AsyncIO.
        loop = get_event_loop_thread()
        if loop is not None:
            loop.run_coroutine(self.runtime.close())


class LogContext(Middleware):
    """Binds the message id, actor and queue to every log line of a message.

    Async actors see them too: run_coroutine_threadsafe schedules the coroutine
    in a copy of the worker thread's context.
    """

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id, actor=message.actor_name, queue=message.queue_name
        )

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        structlog.contextvars.unbind_contextvars("message_id", "actor", "queue")

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        structlog.contextvars.unbind_contextvars("message_id", "actor", "queue")


def build_broker(settings: Settings, *, metrics: bool = False) -> WakingRedisBroker:
    """Build the broker, its middleware and every actor, from settings.

    With `metrics`, Dramatiq's Prometheus middleware is added too (it expects
    the multiprocess directory `aiwrap worker` sets up; see workers/metrics.py).
    """
    from . import chat, identity  # actors import the broker's names, so import them late

    broker = WakingRedisBroker(
        client=redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        ),
        namespace=NAMESPACE,
        heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
    )
    runtime = Runtime(settings)
    middleware: list[Middleware] = [
        UvloopAsyncIO(),
        CurrentMessage(),
        LogContext(),
        RuntimeMiddleware(runtime),  # after AsyncIO: see its after_worker_shutdown
    ]
    if metrics:
        from dramatiq.middleware.prometheus import Prometheus

        middleware.append(Prometheus())
    for each in middleware:
        broker.add_middleware(each)
    identity.declare(broker, runtime)
    chat.declare(broker, runtime)
    for queue_name in QUEUES:
        broker.declare_queue(queue_name)
    return broker


def queue_sizes(broker: RedisBroker) -> dict[str, int]:
    """Messages waiting in each queue, its delay queue included."""
    return {
        name: int(broker.do_qsize(name)) + int(broker.do_qsize(dq_name(name))) for name in QUEUES
    }
