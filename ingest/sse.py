"""GET /v1/chat/{id}/stream: a chat's answer as Server-Sent Events.

While the chat's Redis stream lives, events are relayed from it as the worker publishes
them, each with its stream entry id as the SSE `id:`, so a client reconnecting with
`Last-Event-ID` (or `?last_event_id=`) resumes with no gap and no repeat. Once the stream
has expired, a finished exchange is replayed from Postgres as one delta and its end.
Event names and payloads are in docs/chat-contract.md.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core import streams
from core.errors import InvalidInput

from . import auth
from .auth import ensure_active, require_user
from .bodies import EVENT_ID_PATTERN, EventId, Exchange, SseDelta, SseDone, SseError
from .chat import CHAT_ID, find_exchange
from .openapi import (
    NO_SUCH_CHAT,
    STORES_DOWN,
    TOO_MANY_STREAMS,
    UNAUTHENTICATED,
    USER_DELETED,
    Answer,
    Operation,
    Parameter,
    documented,
    failure,
)
from .relay import chat_events
from .requests import NotFound, caller, chat_id, database, redis_errors
from .slots import HeldStream
from .state import IngestState

#: Tells EventSource to reconnect after this many milliseconds.
RETRY_MS: Final = 1000
STREAM_ID: Final = re.compile(EVENT_ID_PATTERN)
#: Each part of a Redis stream id is an unsigned 64-bit integer.
MAX_ID_PART: Final = 2**64 - 1
SSE_HEADERS: Final = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: pass each event through as it is written
}

#: Ids of the two events a replay from Postgres sends: the whole text, then the end.
REPLAY_TEXT_ID: Final = "0-1"
REPLAY_END_ID: Final = "0-2"


def at_the_end() -> Response:
    """The answer to a client resuming at or past the stream's terminal event: 204, which
    an EventSource takes as the end and stops reconnecting (after a 200 that closes, which
    is how every stream ends, it would reconnect)."""
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("1718000000000-3") as the pair Redis orders entries by."""
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq)


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def resume_point(request: Request) -> str:
    """Where a reconnecting client left off: Last-Event-ID, or ?last_event_id= for clients
    that cannot set headers. "0-0" reads from the start."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not raw:
        return "0-0"
    event_id = raw.strip()
    # Redis refuses an id past 64 bits mid-stream; refuse it here, before any answer.
    if not STREAM_ID.fullmatch(event_id) or any(
        int(part) > MAX_ID_PART for part in event_id.split("-")
    ):
        raise InvalidInput("Last-Event-ID", "must be an event id this stream sent (like 1-0).")
    return event_id


@documented(
    Operation(
        "streamChat",
        "chat",
        "A chat's answer as Server-Sent Events",
        security=auth.USER_OR_COOKIE,
        parameters=[
            CHAT_ID,
            Parameter(
                "Last-Event-ID",
                "header",
                "The id of the last event received; the stream resumes after it.",
                EventId,
            ),
            Parameter(
                "last_event_id",
                "query",
                "The same, for clients that cannot set headers (the header wins).",
                EventId,
            ),
        ],
        answers=[
            Answer(
                200,
                "The stream starts with `retry: 1000`, then carries `event: delta` for each "
                "piece of text and ends with exactly one `event: done` or `event: error`. "
                "Each event's `data:` is one line of JSON (see `x-events`). Comment lines "
                "(`: keepalive`) keep an idle connection open. An `error` without an `id:` "
                "(`stream_unavailable`) means the stream broke: reconnect to resume.",
                media_type="text/event-stream",
                headers={"Cache-Control": {"schema": {"type": "string"}}},
                events={"delta": SseDelta, "done": SseDone, "error": SseError},
                example=(
                    "retry: 1000\n\nid: 1718000000000-0\nevent: delta\n"
                    'data: {"content":"Hello"}\n\nid: 1718000000001-0\nevent: done\n'
                    'data: {"status":"ok","finish_reason":"stop","prompt_tokens":9,'
                    '"completion_tokens":2,"cost_microcents":255}\n\n'
                ),
            ),
            Answer(
                204,
                "Last-Event-ID is the stream's terminal event, or past it: nothing is left, "
                "and an EventSource stops reconnecting.",
                media_type="",
            ),
            failure(400, "Last-Event-ID is not an event id.", "invalid_request"),
            UNAUTHENTICATED,
            USER_DELETED,
            NO_SUCH_CHAT,
            TOO_MANY_STREAMS,
            STORES_DOWN,
        ],
    )
)
async def stream_chat(request: Request) -> Response:
    """Works with the browser's EventSource, which sends Clerk's `__session` cookie (this
    route alone accepts it, being a read). Every event has an `id:`; reconnecting with
    `Last-Event-ID` resumes with no gap and no repeat, and a client that connects after
    the chat finished gets the whole answer."""
    state = IngestState.of(request)
    user_id = require_user(caller(request, allow_cookie=True))
    job_id = chat_id(request)
    after = resume_point(request)

    async def active() -> None:
        async with database(state) as conn:
            await ensure_active(conn, user_id)

    async def job_record() -> tuple[streams.JobRecord | None, streams.StreamEvent | None]:
        with redis_errors():
            return await streams.read_job_record_and_last_event(state.redis, job_id)

    # The slot first: a stream past the caps costs no Postgres or Redis round trip.
    with state.streams.take(user_id) as slot:
        # Postgres and Redis at once: the stream's first event waits for neither twice.
        _, (record, last) = await asyncio.gather(active(), job_record())
        if record is None:
            # The Redis stream expired (or never was): replay the exchange from Postgres.
            exchange = await find_exchange(state, user_id, job_id)
            if exchange.status in streams.FINAL_STATUSES and after == REPLAY_END_ID:
                return at_the_end()
            events = replay(exchange, after)
        elif record.user_id != user_id:
            raise NotFound()
        elif last is not None and last.terminal and entry_order(after) >= entry_order(last.id):
            return at_the_end()
        else:
            events = relay(state, job_id, after)
        return HeldStream(
            events, slot=slot.pass_on(), media_type="text/event-stream", headers=SSE_HEADERS
        )


async def relay(state: IngestState, job_id: str, after: str) -> AsyncIterator[str]:
    """The chat's Redis stream as SSE, from after `after` to its terminal event."""
    yield f"retry: {RETRY_MS}\n\n"
    async for event in chat_events(state.stream_redis, job_id, after):
        if event is None:
            yield ": keepalive\n\n"
        else:
            # An event of the relay's own (the stream broke) has no id: a client that
            # reconnects resumes after the last event it did get.
            yield sse(event.event, event.data, event.id or None)


async def replay(exchange: Exchange, after: str) -> AsyncIterator[str]:
    """A finished exchange from Postgres as SSE, for a client later than the stream's TTL."""
    yield f"retry: {RETRY_MS}\n\n"
    if exchange.status not in streams.FINAL_STATUSES:
        yield sse(
            streams.ERROR,
            {"code": "stream_expired", "message": "The chat's stream expired unfinished."},
        )
        return
    if after not in ("0-0", REPLAY_TEXT_ID):
        # The client read part of the live stream; what it got cannot be matched up.
        yield sse(
            streams.ERROR,
            {"code": "stream_expired", "message": "The stream expired; GET the chat for its text."},
        )
        return
    if after == "0-0" and exchange.completion:
        yield sse(streams.DELTA, {"content": exchange.completion}, REPLAY_TEXT_ID)
    metadata = exchange.metadata or {}
    if exchange.status == "error":
        error = metadata.get("error")
        error = error if isinstance(error, dict) else {}
        yield sse(
            streams.ERROR,
            {
                "code": error.get("code", "error"),
                "message": error.get("message", "The chat failed."),
            },
            REPLAY_END_ID,
        )
        return
    yield sse(
        streams.DONE,
        {
            "status": exchange.status,
            "finish_reason": exchange.finish_reason,
            "prompt_tokens": exchange.prompt_tokens,
            "completion_tokens": exchange.completion_tokens,
            "cost_microcents": exchange.cost_microcents,
        },
        REPLAY_END_ID,
    )


routes: list[BaseRoute] = [Route("/v1/chat/{id}/stream", stream_chat, methods=["GET"])]
