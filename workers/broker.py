"""The one place the Dramatiq broker and its middleware are built.

Two queues (core/queues.py): `identity` for Clerk events and `chat` for model
calls, so a slow model never delays identity sync. Workers wake as soon as a
message is enqueued instead of polling Redis with a growing sleep
(workers/consumer.py).
"""

from __future__ import annotations

import redis
from dramatiq.middleware import CurrentMessage, Middleware

from core.queues import NAMESPACE, QUEUES
from core.settings import Settings

from .chat import actor as chat
from .consumer import HEARTBEAT_TIMEOUT_MS, WakingRedisBroker
from .identity import actor as identity
from .middleware import LogContext, RuntimeMiddleware, UvloopAsyncIO
from .runtime import Runtime

#: Seconds before a Redis connect or reply counts as failed; idle consumers
#: block on BLPOP for at most the worker timeout, well inside this.
REDIS_CONNECT_TIMEOUT_S = 5
REDIS_SOCKET_TIMEOUT_S = 10


def build_broker(settings: Settings, *, metrics: bool = False) -> WakingRedisBroker:
    """Build the broker, its middleware and every actor, from settings.

    With `metrics`, Dramatiq's Prometheus middleware is added too (it expects
    the multiprocess directory `aiwrap worker` sets up; see workers/metrics.py).
    """
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
        # Imported only now: at import it reads the multiprocess directory that
        # `aiwrap worker` exports before starting its processes.
        from dramatiq.middleware.prometheus import Prometheus

        middleware.append(Prometheus())
    for each in middleware:
        broker.add_middleware(each)
    identity.declare(broker, runtime)
    chat.declare(broker, runtime)
    for queue_name in QUEUES:
        broker.declare_queue(queue_name)
    return broker
