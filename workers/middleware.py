"""The worker's own Dramatiq middleware: its event loop, its resources, its log context."""

from __future__ import annotations

from typing import Any

import dramatiq
import structlog
import uvloop
from dramatiq.asyncio import EventLoopThread, get_event_loop_thread, set_event_loop_thread
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import AsyncIO, Middleware

from core.logs import get_logger

from .runtime import Runtime

log = get_logger(__name__)


class UvloopAsyncIO(AsyncIO):
    """Dramatiq's AsyncIO middleware, with a uvloop event loop.

    Every piece of every chat a process relays goes through this one loop: a
    read from the model, a write to Redis. asyncio's own loop spends a sixth of
    the process's time in socket writes and selector calls; uvloop does them in C.
    The loop is handed to Dramatiq's loop thread directly, rather than through a
    global event-loop policy (deprecated since Python 3.14).
    """

    def before_worker_boot(self, broker: Broker, worker: dramatiq.Worker) -> None:
        # AsyncIO.before_worker_boot, with the thread's loop replaced before it runs.
        thread = EventLoopThread(self.logger)
        thread.loop.close()
        thread.loop = uvloop.new_event_loop()
        thread.start(timeout=1.0)
        set_event_loop_thread(thread)


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
