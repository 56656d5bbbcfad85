"""The /v1/chat routes: POST a chat, GET it as recorded, DELETE (cancel) it.

Statuses beyond the obvious: 413 `request_too_large` for a chat request over
AIWRAP_MAX_CHAT_BYTES (the status HTTP defines for it, so clients and proxies recognise
it); 402 `budget_exceeded` when Postgres says the user is already at their monthly budget;
404 for a chat that does not exist *or belongs to someone else* (ids are not secrets, so
the two must look the same); 409 `already_finished` for cancelling a finished chat; 503
when Redis or Postgres is down. The Redis layout of a chat and the job message are in
docs/chat-contract.md; its stream is ingest/sse.py, the history ingest/history.py.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core import history, metering, streams
from core.jobs import ChatJob, new_job
from core.messages import ChatId, ChatMessage, Message, ModelParams
from core.queues import CHAT_QUEUE, RUN_CHAT

from . import auth, rates
from .auth import ensure_active, require_user, user_deleted
from .bodies import Cancelling, ChatAccepted, ChatRequest, Exchange
from .errors import ApiError
from .openapi import (
    NO_SUCH_CHAT,
    STORES_DOWN,
    UNAUTHENTICATED,
    USER_DELETED,
    Answer,
    Operation,
    Parameter,
    documented,
    failure,
)
from .requests import (
    NotFound,
    caller,
    chat_id,
    check_priced,
    database,
    exchange_fields,
    iso_text,
    read_model,
    redis_errors,
)
from .responses import BodyResponse
from .state import IngestState

#: user_profiles.default_model's default in schema.sql: the model of a user aiwrap has not seen.
DEFAULT_MODEL: Final = "gpt-4o-mini"

CHAT_ID: Final = Parameter("id", "path", "The chat's id, as POST /v1/chat answered.", ChatId)


# -- POST /v1/chat ------------------------------------------------------------------------


@documented(
    Operation(
        "createChat",
        "chat",
        "Start a chat",
        request=ChatRequest,
        security=auth.USER,
        answers=[
            Answer(
                202,
                "Queued. Read it at `url`, stream it from `stream_url`.",
                ChatAccepted,
                headers={"Location": {"schema": {"type": "string"}}},
            ),
            failure(
                400,
                "A field is missing, malformed or out of range (the message names it), the "
                "body is not a JSON object, or the model has no price.",
                "invalid_request",
                "invalid_json",
                "unknown_model",
            ),
            UNAUTHENTICATED,
            failure(402, "This month's token budget is used up.", "budget_exceeded"),
            USER_DELETED,
            failure(413, "The body is over AIWRAP_MAX_CHAT_BYTES.", "request_too_large"),
            failure(
                429,
                "The user sent as many chat requests this minute as "
                "AIWRAP_USER_REQUESTS_PER_MINUTE allows; retry after Retry-After seconds.",
                "rate_limited",
            ),
            failure(
                503,
                "Redis or Postgres is unavailable; nothing was accepted. Retry.",
                "queue_unavailable",
                "database_unavailable",
            ),
        ],
    )
)
async def create_chat(request: Request) -> Response:
    """The chat is admitted (a deleted user, an unpriced model or a spent budget is
    refused before anything is queued), then queued; a worker streams the model's answer.
    Without `model`, the user's default model is used."""
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    body = await read_model(request, ChatRequest, state.settings.max_chat_bytes)
    job = await start_chat(
        state,
        user_id,
        body.conversation,
        model=body.model,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
    )
    url = f"/v1/chat/{job.id}"
    return BodyResponse(
        ChatAccepted(id=job.id, status="queued", url=url, stream_url=f"{url}/stream"),
        status_code=202,
        headers={"Location": url},
    )


async def start_chat(
    state: IngestState,
    user_id: str,
    conversation: tuple[ChatMessage, ...] | tuple[Message, ...],
    *,
    model: str | None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    params: ModelParams | None = None,
) -> ChatJob:
    """Admit a chat and queue it, or raise why not: the one way in, for the native
    route and the Chat Completions one alike. Without `model`, the user's default."""
    await rates.count_request(
        state.enqueuer.redis, user_id, state.settings.user_requests_per_minute
    )
    if model is not None:
        check_priced(state, model)
    async with database(state) as conn:
        admitted = await metering.admission(conn, user_id)
    if admitted.deleted:
        raise user_deleted()
    if model is None:
        model = admitted.default_model or DEFAULT_MODEL
        check_priced(state, model)
    if admitted.over_budget:
        raise ApiError(
            402, "budget_exceeded", "This month's token budget is used up; see GET /v1/usage."
        )
    job = new_job(
        user_id,
        conversation,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        params=params,
    )
    # The job's record goes in with the message: the worker and the routes that read a
    # chat rely on it being there.
    record = streams.job_record_commands(
        job.id,
        streams.JobRecord(user_id, model, streams.QUEUED, job.requested_at),
        state.settings.stream_ttl_seconds,
    )
    await state.enqueuer.send(CHAT_QUEUE, RUN_CHAT, job, also=record)
    return job


# -- GET /v1/chat/{id} and DELETE /v1/chat/{id} -------------------------------------------


async def find_exchange(state: IngestState, user_id: str, job_id: str) -> Exchange:
    """The exchange as Postgres records it or, before the worker started it, as Redis does."""
    async with database(state) as conn:
        await ensure_active(conn, user_id)
        row = await history.find_exchange(conn, user_id, job_id)
    if row is not None:
        return Exchange(**exchange_fields(row))
    with redis_errors():
        record = await streams.read_job_record(state.redis, job_id)
    if record is None or record.user_id != user_id:
        raise NotFound()
    return Exchange(
        id=job_id,
        created_at=iso_text(record.requested_at),
        model=record.model,
        prompt=None,
        completion=None,
        status=record.status,  # type: ignore[arg-type]
        prompt_tokens=0,
        completion_tokens=0,
        cost_microcents=0,
        latency_ms=None,
        finish_reason=None,
    )


@documented(
    Operation(
        "getChat",
        "chat",
        "A chat as recorded",
        security=auth.USER,
        parameters=[CHAT_ID],
        answers=[
            Answer(200, "The exchange: its status, text, tokens, cost and metadata.", Exchange),
            UNAUTHENTICATED,
            USER_DELETED,
            NO_SUCH_CHAT,
            STORES_DOWN,
        ],
    )
)
async def get_chat(request: Request) -> Response:
    """From Postgres once the worker has started it; before that, from its queued record."""
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    return BodyResponse(await find_exchange(state, user_id, chat_id(request)))


@documented(
    Operation(
        "cancelChat",
        "chat",
        "Cancel a chat",
        security=auth.USER,
        parameters=[CHAT_ID],
        answers=[
            Answer(202, "Asked: the worker stops reading the model promptly.", Cancelling),
            UNAUTHENTICATED,
            USER_DELETED,
            NO_SUCH_CHAT,
            failure(409, "The chat already finished.", "already_finished"),
            STORES_DOWN,
        ],
    )
)
async def cancel_chat(request: Request) -> Response:
    """The partial exchange is logged and metered; its stream ends with `error`
    `cancelled`."""
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    job_id = chat_id(request)
    exchange = await find_exchange(state, user_id, job_id)
    if exchange.status in streams.FINAL_STATUSES:
        raise ApiError(
            409, "already_finished", f"The chat already finished with status {exchange.status}."
        )
    with redis_errors():
        await streams.request_cancel(state.redis, job_id, state.settings.stream_ttl_seconds)
    return BodyResponse(Cancelling(id=job_id, status="cancelling"), status_code=202)


routes: list[BaseRoute] = [
    Route("/v1/chat", create_chat, methods=["POST"]),
    Route("/v1/chat/{id}", get_chat, methods=["GET"]),
    Route("/v1/chat/{id}", cancel_chat, methods=["DELETE"]),
]
