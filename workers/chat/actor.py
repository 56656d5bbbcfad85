"""The chat actor, `run_chat(job)` on the `chat` queue, and queueing a chat from Python.

Concurrency. `run_chat` is async: every chat a process runs shares its one event
loop, its one database connection (held only for the two short transactions, never
while the model talks) and its one HTTP connection pool. Dramatiq runs one message
per worker thread, so the thread count is the limit on concurrent chats per process:
`aiwrap worker --queues chat --threads 500` holds 500 upstream streams in one process.
"""

from __future__ import annotations

from typing import Any, Final

import dramatiq
import msgspec
import redis as redis_sync
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker

from core import streams
from core.errors import InvalidChatJob
from core.faults import is_transient, schema_behind
from core.jobs import ChatJob, read_chat_job
from core.logs import get_logger
from core.queues import CHAT_QUEUE, RUN_CHAT

from ..runtime import Runtime
from .exchange import Chat

log = get_logger(__name__)

#: Whole runs of a job after an infrastructure failure, and how long one may take.
MAX_RUN_RETRIES: Final = 5
#: Dramatiq's default limit (10 min) would cut a long generation short.
TIME_LIMIT_MS: Final = 30 * 60_000


def declare(broker: Broker, runtime: Runtime) -> None:
    """Declare the chat actor on `broker`."""

    async def run_chat(job: dict[str, Any]) -> None:
        try:
            chat = read_chat_job(job)
        except InvalidChatJob as error:
            log.error(
                "chat_job_invalid",
                reason=str(error),
                job_id=job.get("id") if isinstance(job, dict) else None,
            )
            return
        await Chat(runtime, chat).run()

    dramatiq.actor(
        actor_name=RUN_CHAT,
        queue_name=CHAT_QUEUE,
        broker=broker,
        # Model errors are handled inside; only an outage of Postgres or Redis
        # longer than the in-run retries fails a run, and a new run resumes it.
        retry_when=should_retry,
        min_backoff=1_000,
        max_backoff=30_000,
        time_limit=TIME_LIMIT_MS,
    )(run_chat)


def should_retry(retries: int, error: BaseException) -> bool:
    """An outage retries the whole run a few times; anything else is a bug, not retried."""
    # aiwrap_begin_chat is missing until `aiwrap migrate` runs: that passes too.
    return (is_transient(error) or schema_behind(error)) and retries < MAX_RUN_RETRIES


def enqueue_chat(broker: RedisBroker, job: ChatJob, *, stream_ttl_seconds: int = 3600) -> str:
    """Queue a chat for a Python app and return its id (blocking; use from sync code).

    `job` comes from `core.jobs.new_job`. The answer streams to `aiwrap:chat:{id}:events`
    (read it with `core.streams.read_events`), and is logged in prompt_logs.
    """
    client: redis_sync.Redis = broker.client
    record = streams.JobRecord(job.user_id, job.model, streams.QUEUED, job.requested_at)
    with client.pipeline(transaction=True) as pipe:
        for command in streams.job_record_commands(job.id, record, stream_ttl_seconds):
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        pipe.execute()
    broker.enqueue(
        dramatiq.Message(
            queue_name=CHAT_QUEUE,
            actor_name=RUN_CHAT,
            args=(msgspec.to_builtins(job),),
            kwargs={},
            options={},
        )
    )
    return job.id
