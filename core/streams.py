"""The Redis side of a chat: its job record, its event stream, its cancel flag.

Both halves use these helpers: ingest writes the job record and reads events for
SSE; the chat worker publishes events and finishes the record. Key layout and
event shapes are in docs/chat-contract.md:

    aiwrap:chat:{id}:job     hash: user_id, model, status, requested_at
    aiwrap:chat:{id}:events  stream of {event: delta|done|error, data: JSON}
    aiwrap:chat:{id}:cancel  "1" once someone asked to cancel
    aiwrap:chat:{id}:lease   the worker currently running the job (see workers/chat/exchange.py)

A stream entry's id is the SSE `id:`, so a client resuming with `Last-Event-ID`
reads `read_events(redis, job_id, after_id=last_event_id, ...)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis.asyncio as aioredis

from .logs import get_logger

log = get_logger(__name__)

PREFIX: Final = "aiwrap:chat"

#: Pub/Sub channel carrying the id of every chat someone asked to cancel.
CANCEL_CHANNEL: Final = "aiwrap:chat:cancel"

DELTA: Final = "delta"
DONE: Final = "done"
ERROR: Final = "error"
TERMINAL_EVENTS: Final = frozenset({DONE, ERROR})

EventName = Literal["delta", "done", "error"]

QUEUED: Final = "queued"
RUNNING: Final = "running"
#: Final statuses, the same words as prompt_logs.status.
FINAL_STATUSES: Final = frozenset({"ok", "error", "filtered"})


def job_key(job_id: str) -> str:
    """The hash that says who owns a chat and where it stands."""
    return f"{PREFIX}:{job_id}:job"


def events_key(job_id: str) -> str:
    """The stream of a chat's delta/done/error events."""
    return f"{PREFIX}:{job_id}:events"


def cancel_key(job_id: str) -> str:
    """Set once someone asked to cancel the chat."""
    return f"{PREFIX}:{job_id}:cancel"


def lease_key(job_id: str) -> str:
    """Held by the one worker running the chat, renewed while it runs."""
    return f"{PREFIX}:{job_id}:lease"


@dataclass(frozen=True)
class StreamEvent:
    """One entry of a chat's event stream; `id` is its stream entry id (the SSE id)."""

    id: str
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


@dataclass(frozen=True)
class JobRecord:
    """The job hash as ingest wrote it and the worker updated it."""

    user_id: str
    model: str
    status: str
    requested_at: str


def text(value: bytes | str) -> str:
    """A Redis reply as text: redis-py answers bytes unless asked to decode."""
    return value.decode() if isinstance(value, bytes) else value


def _event(entry_id: bytes | str, fields: dict[Any, Any]) -> StreamEvent:
    decoded = {text(k): text(v) for k, v in fields.items()}
    try:
        data = json.loads(decoded.get("data", "{}"))
    except json.JSONDecodeError:
        data = {}
    return StreamEvent(
        text(entry_id), decoded.get("event", ""), data if isinstance(data, dict) else {}
    )


def _encode(event: str, data: dict[str, Any]) -> dict[str, str]:
    return {"event": event, "data": json.dumps(data, separators=(",", ":"))}


async def publish(
    redis: aioredis.Redis,
    job_id: str,
    event: EventName,
    data: dict[str, Any],
    *,
    ttl_seconds: int | None = None,
) -> str:
    """Append one event to the chat's stream and return its entry id.

    With `ttl_seconds`, (re)start the stream's time to live in the same round trip.
    """
    key = events_key(job_id)
    if ttl_seconds is None:
        entry_id = await redis.xadd(key, _encode(event, data))  # type: ignore[arg-type]
        return text(entry_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(key, _encode(event, data))  # type: ignore[arg-type]
        pipe.expire(key, ttl_seconds)
        entry_id, _ = await pipe.execute()
    return text(entry_id)


async def finish(
    redis: aioredis.Redis,
    job_id: str,
    event: EventName,
    data: dict[str, Any],
    status: str,
    ttl_seconds: int,
) -> str:
    """Append the terminal event, set the final status, start the keys' time to live.

    One MULTI, so a reader never sees the terminal event without the final status.
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xadd(events_key(job_id), _encode(event, data))  # type: ignore[arg-type]
        pipe.hset(job_key(job_id), "status", status)
        for key in (events_key(job_id), job_key(job_id)):
            pipe.expire(key, ttl_seconds)
        results = await pipe.execute()
    return text(results[0])


async def read_events(
    redis: aioredis.Redis,
    job_id: str,
    after_id: str = "0-0",
    block_ms: int | None = None,
    count: int | None = None,
) -> list[StreamEvent]:
    """Events after `after_id` ("0-0": from the start), waiting up to `block_ms` for one.

    Returns [] when nothing came within `block_ms` (or at once, when it is None).
    """
    reply: Any = await redis.xread({events_key(job_id): after_id}, count=count, block=block_ms)
    if not reply:
        return []
    # redis-py (RESP2, its default) answers [[key, [(entry_id, fields), ...]]].
    return [_event(entry_id, fields) for _key, entries in reply for entry_id, fields in entries]


@dataclass(frozen=True)
class Taken:
    """A job a worker has taken: its stream so far, and whether it was cancelled."""

    events: list[StreamEvent]
    cancelled: bool


async def take(
    redis: aioredis.Redis, job_id: str, lease: str, token: str, lease_ms: int
) -> Taken | None:
    """Take the job's lease; None when another worker holds it. One round trip: the
    lease, the events a previous run published, and the cancel flag."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(lease, token, nx=True, px=lease_ms)
        pipe.xrange(events_key(job_id))
        pipe.exists(cancel_key(job_id))
        leased, entries, cancelled = await pipe.execute()
    if not leased:
        return None
    return Taken([_event(entry_id, fields) for entry_id, fields in entries], bool(cancelled))


def job_record_commands(job_id: str, record: JobRecord, ttl_seconds: int) -> list[tuple[str, ...]]:
    """The Redis commands that write the job hash, for a caller's own transaction."""
    key = job_key(job_id)
    fields = (
        ("user_id", record.user_id),
        ("model", record.model),
        ("status", record.status),
        ("requested_at", record.requested_at),
    )
    return [
        ("HSET", key, *(word for pair in fields for word in pair)),
        ("EXPIRE", key, str(ttl_seconds)),
    ]


async def write_job_record(
    redis: aioredis.Redis, job_id: str, record: JobRecord, ttl_seconds: int
) -> None:
    """Write the job hash: when the job starts (the worker), or in tests."""
    async with redis.pipeline(transaction=True) as pipe:
        for command in job_record_commands(job_id, record, ttl_seconds):
            pipe.execute_command(*command)
        await pipe.execute()


async def read_job_record(redis: aioredis.Redis, job_id: str) -> JobRecord | None:
    """The job hash, or None when there is none (never written, or expired)."""
    return _job_record(await redis.hgetall(job_key(job_id)))


async def read_job_record_and_last_event(
    redis: aioredis.Redis, job_id: str
) -> tuple[JobRecord | None, StreamEvent | None]:
    """The job hash and the stream's last event (None for either that is not there), in
    one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(job_key(job_id))
        pipe.xrevrange(events_key(job_id), count=1)
        raw, last = await pipe.execute()
    return _job_record(raw), (_event(*last[0]) if last else None)


def _job_record(raw: Any) -> JobRecord | None:
    if not raw:
        return None
    fields = {text(k): text(v) for k, v in raw.items()}
    return JobRecord(
        fields.get("user_id", ""),
        fields.get("model", ""),
        fields.get("status", QUEUED),
        fields.get("requested_at", ""),
    )


async def request_cancel(redis: aioredis.Redis, job_id: str, ttl_seconds: int) -> None:
    """Ask the worker to stop the chat: set the flag it checks, and tell the listeners."""
    await redis.set(cancel_key(job_id), "1", ex=ttl_seconds)
    await redis.publish(CANCEL_CHANNEL, job_id)


async def cancel_requested(redis: aioredis.Redis, job_id: str) -> bool:
    """True once someone asked to cancel the chat."""
    return bool(await redis.exists(cancel_key(job_id)))
