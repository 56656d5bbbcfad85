"""The /v1 routes: chats, their streams, history, usage, and the admin profile route.

Errors are `{"error": {"code", "message"}}`; a message names the field and what is wrong
with it. Statuses beyond the obvious: 413 `request_too_large` for a chat request over
AIWRAP_MAX_CHAT_BYTES (the status HTTP defines for it, so clients and proxies recognise
it); 402 `budget_exceeded` when Postgres says the user is already at their monthly budget;
404 for a chat that does not exist *or belongs to someone else* (ids are not secrets, so
the two must look the same); 409 `already_finished` for cancelling a finished chat;
410 `user_deleted` for setting the profile of a deleted user; 503 when Redis or Postgres
is down. The Redis layout of a chat and the job message are in docs/chat-contract.md.

The ingest pool holds one connection, so each route takes it once, does all its reads in
one go, and gives it back before any Redis I/O.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import psycopg
import redis.exceptions
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from workers import metering, streams
from workers.broker import CHAT_QUEUE
from workers.chat import ACTOR_NAME, InvalidChatJob, new_job
from workers.profiles import get_profile, set_profile

from .auth import Caller, authenticate, ensure_active, require_service, require_user
from .errors import ApiError
from .queue import QueueUnavailable, enqueue
from .state import IngestState

#: user_profiles.default_model's default in schema.sql: the model of a user aiwrap has not seen.
DEFAULT_MODEL: Final = "gpt-4o-mini"
ROLES: Final = ("system", "developer", "user", "assistant")
CHAT_FIELDS: Final = frozenset({"messages", "prompt", "model", "max_tokens", "temperature"})
PROFILE_FIELDS: Final = frozenset({"monthly_token_budget", "default_model"})
BIGINT_MAX: Final = 2**63 - 1

DEFAULT_PAGE: Final = 20
MAX_PAGE: Final = 100

#: How long one XREAD waits before the stream sends a keepalive comment. Well under the
#: Redis client's 10 s socket timeout and the 30-60 s idle timeouts of common proxies.
KEEPALIVE_MS: Final = 5000
#: Whole seconds one SSE response may last; EventSource reconnects with Last-Event-ID.
MAX_STREAM_S: Final = 3600
#: Tells EventSource to reconnect after this many milliseconds.
RETRY_MS: Final = 1000
STREAM_ID: Final = re.compile(r"\d{1,20}-\d{1,20}")
SSE_HEADERS: Final = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",  # nginx: pass each event through as it is written
}

#: Columns of one exchange as the API shows it. An in-flight row keeps status's default
#: 'ok' with a NULL completion and metadata.state 'running' (see the chat contract).
EXCHANGE_COLUMNS = """
       p.id::text AS id, p.created_at, p.model, p.prompt, p.completion,
       CASE WHEN p.status = 'ok' AND p.completion IS NULL AND p.metadata->>'state' = 'running'
            THEN 'running' ELSE p.status END AS status,
       p.prompt_tokens, p.completion_tokens, COALESCE(u.cost_microcents, 0) AS cost_microcents,
       p.latency_ms, p.metadata->>'finish_reason' AS finish_reason
"""

SELECT_EXCHANGE = f"""
SELECT {EXCHANGE_COLUMNS}, p.metadata
  FROM prompt_logs p LEFT JOIN token_usage u ON u.prompt_log_id = p.id
 WHERE p.id = %(id)s AND p.user_id = %(user_id)s
"""

#: A page of history, newest first. `created_at <= before_at` lets idx_log_user_time bound
#: the scan; the row comparison breaks ties on id, so equal timestamps never gap or repeat.
SELECT_HISTORY = f"""
SELECT {EXCHANGE_COLUMNS}
  FROM prompt_logs p LEFT JOIN token_usage u ON u.prompt_log_id = p.id
 WHERE p.user_id = %(user_id)s
   AND (%(before_at)s::timestamptz IS NULL
        OR (p.created_at <= %(before_at)s
            AND (p.created_at, p.id) < (%(before_at)s, %(before_id)s::uuid)))
 ORDER BY p.created_at DESC, p.id DESC
 LIMIT %(limit)s
"""


class InvalidInput(ApiError):
    """A request field is missing, malformed or out of range."""

    def __init__(self, field: str, why: str, code: str = "invalid_request") -> None:
        super().__init__(400, code, f"{field}: {why}")


class NotFound(ApiError):
    """No such chat for this caller (it may be someone else's: that looks the same)."""

    def __init__(self) -> None:
        super().__init__(404, "not_found", "No chat with this id.")


# -- plumbing -----------------------------------------------------------------------------


@asynccontextmanager
async def database(state: IngestState) -> AsyncIterator[Any]:
    """The pool's one connection, with an outage answered as 503."""
    try:
        async with state.pool.connection() as conn:
            yield conn
    except (psycopg.OperationalError, psycopg.InterfaceError) as error:
        raise ApiError(
            503,
            "database_unavailable",
            "The database is unavailable. Retry shortly.",
            headers={"Retry-After": "1"},
        ) from error


@contextmanager
def redis_errors() -> Iterator[None]:
    """A Redis outage answered as 503."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        raise ApiError(
            503,
            "redis_unavailable",
            "Redis is unavailable. Retry shortly.",
            headers={"Retry-After": "1"},
        ) from error


@lru_cache(maxsize=4)
def prices(path: Path | None) -> dict[str, metering.Price]:
    """The price table, read once per process (and per AIWRAP_PRICES)."""
    return metering.load_prices(path)


def check_priced(state: IngestState, model: str, field: str = "model") -> None:
    if metering.price_for(prices(state.settings.prices_path), model) is None:
        raise InvalidInput(
            field, f"{model!r} is not a model aiwrap has a price for.", code="unknown_model"
        )


def caller(request: Request, *, allow_cookie: bool = False) -> Caller:
    return authenticate(request, IngestState.of(request).settings, allow_cookie=allow_cookie)


def chat_id(request: Request) -> str:
    """The path's chat id in canonical form; anything that is not a UUID is no chat."""
    try:
        return str(uuid.UUID(request.path_params["id"]))
    except ValueError:
        raise NotFound() from None


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refusing more than `limit` bytes before reading them."""
    declared = request.headers.get("content-length", "")
    too_large = ApiError(
        413, "request_too_large", f"The request body is over the {limit}-byte limit."
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return value


def reject_unknown(body: dict[str, Any], known: frozenset[str]) -> None:
    for name in body:
        if name not in known:
            raise InvalidInput(name, f"unknown field; this route takes {', '.join(sorted(known))}.")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_text(value: str) -> str:
    """An ISO timestamp written by someone else, in this API's form when it parses."""
    try:
        return iso(datetime.fromisoformat(value))
    except ValueError:
        return value


def exchange_json(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "created_at": iso(row["created_at"])}


# -- POST /v1/chat ------------------------------------------------------------------------


def parse_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    if "prompt" in body:
        if "messages" in body:
            raise InvalidInput("prompt", "send either prompt or messages, not both.")
        prompt = body["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidInput("prompt", "must be a non-empty string.")
        return [{"role": "user", "content": prompt}]
    messages = body.get("messages")
    if messages is None:
        raise InvalidInput("messages", "required (or the shorthand prompt).")
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("messages", "must be a non-empty array of {role, content}.")
    parsed = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidInput(where, "must be an object with role and content.")
        extra = set(message) - {"role", "content"}
        if extra:
            raise InvalidInput(f"{where}.{min(extra)}", "unknown field; use role and content.")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidInput(f"{where}.role", f"must be one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise InvalidInput(f"{where}.content", "must be a string.")
        parsed.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in parsed):
        raise InvalidInput("messages", "every content is empty; there is nothing to answer.")
    return parsed


def parse_options(body: dict[str, Any]) -> tuple[str | None, int | None, float | None]:
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 200):
        raise InvalidInput("model", "must be a model name (a string of 1 to 200 characters).")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not is_int(max_tokens) or not 1 <= max_tokens <= 1_000_000):
        raise InvalidInput("max_tokens", "must be an integer from 1 to 1000000.")
    temperature = body.get("temperature")
    if temperature is not None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not math.isfinite(temperature)
            or not 0 <= temperature <= 2
        ):
            raise InvalidInput("temperature", "must be a number from 0 to 2.")
        temperature = float(temperature)
    return model, max_tokens, temperature


async def create_chat(request: Request) -> Response:
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    body = await read_json(request, state.settings.max_chat_bytes)
    reject_unknown(body, CHAT_FIELDS)
    messages = parse_messages(body)
    model, max_tokens, temperature = parse_options(body)
    if model is not None:
        check_priced(state, model)

    async with database(state) as conn:
        await ensure_active(conn, user_id)
        if model is None:
            profile = await get_profile(conn, user_id)
            model = profile.default_model if profile else DEFAULT_MODEL
            check_priced(state, model)
        if await metering.over_budget(conn, user_id):
            raise ApiError(
                402, "budget_exceeded", "This month's token budget is used up; see GET /v1/usage."
            )

    try:
        job = new_job(
            user_id, messages, model=model, max_tokens=max_tokens, temperature=temperature
        )
    except InvalidChatJob as error:  # the worker's own checks; ours above should catch first
        raise ApiError(400, "invalid_request", str(error)) from None
    job_id, requested_at = job["id"], job["requested_at"]
    with redis_errors():
        # Written first: the worker, and this route's GETs, rely on it being there.
        await streams.write_job_record(
            state.redis,
            job_id,
            user_id=user_id,
            model=model,
            requested_at=requested_at,
            ttl_seconds=state.settings.stream_ttl_seconds,
        )
    try:
        await enqueue(state.broker, CHAT_QUEUE, ACTOR_NAME, job)
    except QueueUnavailable:
        # Nothing was accepted, so no record should say "queued"; Redis may be gone anyway.
        with contextlib.suppress(redis.exceptions.RedisError):
            await state.redis.delete(streams.job_key(job_id))
        raise
    url = f"/v1/chat/{job_id}"
    return JSONResponse(
        {"id": job_id, "status": streams.QUEUED, "url": url, "stream_url": f"{url}/stream"},
        status_code=202,
        headers={"Location": url},
    )


# -- GET /v1/chat/{id} and DELETE /v1/chat/{id} -------------------------------------------


async def find_exchange(state: IngestState, user_id: str, job_id: str) -> dict[str, Any]:
    """The exchange as Postgres records it or, before the worker started it, as Redis does."""
    async with database(state) as conn:
        await ensure_active(conn, user_id)
        cursor = await conn.execute(SELECT_EXCHANGE, {"id": job_id, "user_id": user_id})
        row = await cursor.fetchone()
    if row is not None:
        return exchange_json(row)
    with redis_errors():
        record = await streams.read_job_record(state.redis, job_id)
    if record is None or record.user_id != user_id:
        raise NotFound()
    return {
        "id": job_id,
        "created_at": iso_text(record.requested_at),
        "model": record.model,
        "prompt": None,
        "completion": None,
        "status": record.status,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_microcents": 0,
        "latency_ms": None,
        "finish_reason": None,
        "metadata": None,
    }


async def get_chat(request: Request) -> Response:
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    return JSONResponse(await find_exchange(state, user_id, chat_id(request)))


async def cancel_chat(request: Request) -> Response:
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    job_id = chat_id(request)
    exchange = await find_exchange(state, user_id, job_id)
    if exchange["status"] in streams.FINAL_STATUSES:
        raise ApiError(
            409, "already_finished", f"The chat already finished with status {exchange['status']}."
        )
    with redis_errors():
        await streams.request_cancel(state.redis, job_id, state.settings.stream_ttl_seconds)
    return JSONResponse({"id": job_id, "status": "cancelling"}, status_code=202)


# -- GET /v1/chat/{id}/stream -------------------------------------------------------------


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def resume_point(request: Request) -> str:
    """Where a reconnecting client left off: Last-Event-ID, or ?last_event_id= for clients
    that cannot set headers. "0-0" reads from the start."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not raw:
        return "0-0"
    if not STREAM_ID.fullmatch(raw.strip()):
        raise InvalidInput("Last-Event-ID", "must be an event id this stream sent (like 1-0).")
    return raw.strip()


async def stream_chat(request: Request) -> Response:
    state = IngestState.of(request)
    user_id = require_user(caller(request, allow_cookie=True))
    job_id = chat_id(request)
    after = resume_point(request)
    async with database(state) as conn:
        await ensure_active(conn, user_id)
    with redis_errors():
        record = await streams.read_job_record(state.redis, job_id)
    if record is None:
        # The Redis stream expired (or never was): replay the finished exchange from Postgres.
        exchange = await find_exchange(state, user_id, job_id)
        return StreamingResponse(
            replay(exchange, after), media_type="text/event-stream", headers=SSE_HEADERS
        )
    if record.user_id != user_id:
        raise NotFound()
    return StreamingResponse(
        relay(state, job_id, after), media_type="text/event-stream", headers=SSE_HEADERS
    )


async def relay(state: IngestState, job_id: str, after: str) -> AsyncIterator[str]:
    """The chat's Redis stream as SSE, from after `after` to its terminal event."""
    yield f"retry: {RETRY_MS}\n\n"
    deadline = time.monotonic() + MAX_STREAM_S
    while time.monotonic() < deadline:
        try:
            events = await streams.read_events(
                state.redis, job_id, after_id=after, block_ms=KEEPALIVE_MS, count=256
            )
            if not events and not await state.redis.exists(streams.job_key(job_id)):
                yield sse(
                    streams.ERROR,
                    {"code": "stream_expired", "message": "The chat's stream expired unfinished."},
                )
                return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            # No id: a client reconnecting resumes after the last event it did get.
            yield sse(
                streams.ERROR,
                {"code": "stream_unavailable", "message": "Redis went away; reconnect to resume."},
            )
            return
        if not events:
            yield ": keepalive\n\n"
            continue
        for event in events:
            yield sse(event.event, event.data, event.id)
            after = event.id
            if event.terminal:
                return
    # Reached only after MAX_STREAM_S: EventSource reconnects, resuming where this left off.


#: Ids of the two events a replay from Postgres sends: the whole text, then the end.
REPLAY_TEXT_ID: Final = "0-1"
REPLAY_END_ID: Final = "0-2"


async def replay(exchange: dict[str, Any], after: str) -> AsyncIterator[str]:
    """A finished exchange from Postgres as SSE, for a client later than the stream's TTL."""
    yield f"retry: {RETRY_MS}\n\n"
    if exchange["status"] not in streams.FINAL_STATUSES:
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
    if after == "0-0" and exchange["completion"]:
        yield sse(streams.DELTA, {"content": exchange["completion"]}, REPLAY_TEXT_ID)
    metadata = exchange.get("metadata") or {}
    if exchange["status"] == "error":
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
            key: exchange[key]
            for key in (
                "status",
                "finish_reason",
                "prompt_tokens",
                "completion_tokens",
                "cost_microcents",
            )
        },
        REPLAY_END_ID,
    )


# -- GET /v1/chats ------------------------------------------------------------------------


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = json.loads(raw)
        return datetime.fromisoformat(at), str(uuid.UUID(row_id))
    except (binascii.Error, ValueError, TypeError):
        raise InvalidInput("before", "not a cursor this server issued (use next_before).") from None


async def list_chats(request: Request) -> Response:
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    raw_limit = request.query_params.get("limit", str(DEFAULT_PAGE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise InvalidInput("limit", f"must be an integer from 1 to {MAX_PAGE}.")
    limit = int(raw_limit)
    before = request.query_params.get("before")
    before_at, before_id = decode_cursor(before) if before else (None, None)
    async with database(state) as conn:
        await ensure_active(conn, user_id)
        cursor = await conn.execute(
            SELECT_HISTORY,
            {
                "user_id": user_id,
                "before_at": before_at,
                "before_id": before_id,
                "limit": limit + 1,
            },
        )
        rows = await cursor.fetchall()
    page = rows[:limit]
    next_before = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return JSONResponse({"items": [exchange_json(r) for r in page], "next_before": next_before})


# -- GET /v1/usage ------------------------------------------------------------------------


async def usage(request: Request) -> Response:
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    async with database(state) as conn:
        await ensure_active(conn, user_id)
        month = await metering.month_usage(conn, user_id)
    return JSONResponse(
        {
            "month": month.month,
            "tokens_used": month.tokens_used,
            "monthly_token_budget": month.monthly_token_budget,
            "remaining": month.remaining,
            "cost_microcents": month.cost_microcents,
            "by_model": [
                {"model": m.model, "tokens": m.tokens, "cost_microcents": m.cost_microcents}
                for m in month.by_model
            ],
        }
    )


# -- PUT /v1/admin/users/{user_id}/profile ------------------------------------------------


async def put_profile(request: Request) -> Response:
    state = IngestState.of(request)
    require_service(caller(request))
    user_id = request.path_params["user_id"]
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", user_id):
        raise InvalidInput("user_id", "must be a Clerk user id: 1 to 128 letters, digits, _ or -.")
    body = await read_json(request, state.settings.max_chat_bytes)
    reject_unknown(body, PROFILE_FIELDS)
    budget, model = body.get("monthly_token_budget"), body.get("default_model")
    if not body:
        raise InvalidInput("body", "set monthly_token_budget, default_model or both.")
    if budget is not None and (not is_int(budget) or not 0 <= budget <= BIGINT_MAX):
        raise InvalidInput("monthly_token_budget", "must be an integer, 0 (no cap) or more.")
    if model is not None:
        if not isinstance(model, str) or not model:
            raise InvalidInput("default_model", "must be a model name.")
        check_priced(state, model, "default_model")
    async with database(state) as conn:
        profile = await set_profile(
            conn,
            user_id,
            monthly_token_budget=budget,
            default_model=model,
            default_budget=state.settings.default_monthly_token_budget,
        )
    if profile is None:
        raise ApiError(410, "user_deleted", "This user was deleted in Clerk.")
    return JSONResponse(
        {
            "user_id": profile.user_id,
            "monthly_token_budget": profile.monthly_token_budget,
            "default_model": profile.default_model,
        }
    )


routes = [
    Route("/v1/chat", create_chat, methods=["POST"]),
    Route("/v1/chat/{id}/stream", stream_chat, methods=["GET"]),
    Route("/v1/chat/{id}", get_chat, methods=["GET"]),
    Route("/v1/chat/{id}", cancel_chat, methods=["DELETE"]),
    Route("/v1/chats", list_chats, methods=["GET"]),
    Route("/v1/usage", usage, methods=["GET"]),
    Route("/v1/admin/users/{user_id}/profile", put_profile, methods=["PUT"]),
]
