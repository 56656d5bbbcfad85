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

import math
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from workers import history, metering, streams
from workers.broker import CHAT_QUEUE
from workers.chat import ACTOR_NAME, InvalidChatJob, new_job

from .auth import ensure_active, require_user, user_deleted
from .errors import ApiError
from .requests import (
    InvalidInput,
    NotFound,
    caller,
    chat_id,
    check_priced,
    database,
    exchange_json,
    is_int,
    iso_text,
    read_json,
    redis_errors,
    reject_unknown,
)
from .state import IngestState

#: user_profiles.default_model's default in schema.sql: the model of a user aiwrap has not seen.
DEFAULT_MODEL: Final = "gpt-4o-mini"
ROLES: Final = ("system", "developer", "user", "assistant")
CHAT_FIELDS: Final = frozenset({"messages", "prompt", "model", "max_tokens", "temperature"})


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

    try:
        job = new_job(
            user_id, messages, model=model, max_tokens=max_tokens, temperature=temperature
        )
    except InvalidChatJob as error:  # the worker's own checks; ours above should catch first
        raise ApiError(400, "invalid_request", str(error)) from None
    job_id = job["id"]
    # The job's record goes in with the message: the worker and this route's GETs
    # rely on it being there.
    record = streams.job_record_commands(
        job_id,
        streams.JobRecord(user_id, model, streams.QUEUED, job["requested_at"]),
        state.settings.stream_ttl_seconds,
    )
    await state.enqueuer.send(CHAT_QUEUE, ACTOR_NAME, job, also=record)
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
        row = await history.find_exchange(conn, user_id, job_id)
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


routes: list[BaseRoute] = [
    Route("/v1/chat", create_chat, methods=["POST"]),
    Route("/v1/chat/{id}", get_chat, methods=["GET"]),
    Route("/v1/chat/{id}", cancel_chat, methods=["DELETE"]),
]
