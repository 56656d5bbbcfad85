"""The OpenAI-compatible API: POST /v1/chat/completions and GET /v1/models.

An app that speaks OpenAI's Chat Completions (the openai SDKs, the Vercel AI SDK) uses
aiwrap as its base URL. Each request is a chat job like any other (start_chat: the same
admission, queue, worker, rows and metering); the answer is read off the chat's stream
(ingest/relay.py) in the same response, as chunks (`stream: true`) or whole.

The answer waits for the chat's first event before it starts, so that a chat refused
before any output gets a status and OpenAI's error shape, which the SDKs raise as their
own exception classes. After output began, a failure is a last `data: {"error": ...}`
event and no `[DONE]`, so the SDKs raise rather than take a cut answer for a whole one.
A client that goes away stops nothing: the chat runs to its end, is logged and metered,
and can be read again by the `X-Chat-Id` every answer carries.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core import streams
from core.errors import InvalidInput
from core.messages import USER_ID, fold_tool_deltas
from core.storable import storable
from core.streams import StreamEvent

from . import auth
from .chat import start_chat
from .errors import ApiError
from .openai_bodies import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    CompletionRequest,
    CompletionUsage,
    ModelCard,
    ModelList,
    OpenAIError,
    OpenAIErrorDetail,
)
from .openapi import Answer, Operation, documented
from .relay import chat_events
from .requests import caller, prices, read_model
from .slots import HeldStream
from .state import IngestState

#: OpenAI's error types, which the SDKs name their exceptions after, by status.
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
#: The status of a chat that ended in an error before any output, by its code.
ENDED_BEFORE_OUTPUT: Final = {
    "budget_exceeded": 402,
    "user_deleted": 403,
    "model_not_priced": 400,
    "upstream_rejected": 400,
    "cancelled": 409,
}
SSE_HEADERS: Final = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}


def openai_error(
    status: int,
    message: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    # Quoted input (a parameter's name or value) as text that encodes: see error_response.
    message, param = storable(message)[0], None if param is None else storable(param)[0]
    body = OpenAIError(OpenAIErrorDetail(message, kind, param, code))
    return Response(msgspec.json.encode(body), status, headers, media_type="application/json")


def usage_of(done: dict[str, Any]) -> CompletionUsage:
    prompt, completion = int(done["prompt_tokens"]), int(done["completion_tokens"])
    return CompletionUsage(prompt, completion, prompt + completion)


def finish_reason_of(done: dict[str, Any]) -> str | None:
    if done.get("status") == "filtered":
        return "content_filter"
    reason = done.get("finish_reason")
    return reason if isinstance(reason, str) else None


class Writer:
    """Writes one chat's answer as Chat Completions, from its stream's events."""

    def __init__(self, job_id: str, model: str) -> None:
        self.id = f"chatcmpl-{job_id}"
        self.model = model
        self.created = int(time.time())

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return data({**self.head("chat.completion.chunk"), "choices": [choice]})

    async def chunks(
        self,
        first: StreamEvent,
        rest: AsyncIterator[StreamEvent | None],
        include_usage: bool,
    ) -> AsyncIterator[str]:
        """The SSE body: the role, the deltas as they come, then the end or an error."""
        yield self.chunk({"role": "assistant", "content": ""})
        event: StreamEvent | None = first
        while True:
            if event is None:
                yield ": keepalive\n\n"
            elif event.event == streams.DELTA:
                yield self.chunk(event.data)
            elif event.event == streams.DONE:
                yield self.chunk({}, finish_reason_of(event.data))
                if include_usage:
                    usage = msgspec.to_builtins(usage_of(event.data))
                    yield data(
                        {**self.head("chat.completion.chunk"), "choices": [], "usage": usage}
                    )
                yield "data: [DONE]\n\n"
                return
            else:  # an error after output began: no [DONE], so the SDKs raise
                yield data({"error": error_detail(event)})
                return
            try:
                event = await anext(rest)
            except StopAsyncIteration:  # the relay's time is up: the client resumes by id
                return

    async def whole(self, first: StreamEvent, rest: AsyncIterator[StreamEvent | None]) -> Response:
        """The `stream: false` body, once the chat has ended."""
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        event: StreamEvent | None = first
        while event is None or event.event == streams.DELTA:
            if event is not None:
                if isinstance(content := event.data.get("content"), str):
                    text.append(content)
                if isinstance(deltas := event.data.get("tool_calls"), list):
                    fold_tool_deltas(calls, deltas)
            event = await anext(rest, streams.StreamEvent("", streams.ERROR, {}))
        if event.event != streams.DONE:
            detail = error_detail(event)
            return openai_error(502, detail["message"], detail["code"])
        message = AssistantMessage(
            role="assistant",
            content="".join(text) if text or not calls else None,
            tool_calls=[calls[i] for i in sorted(calls)] or None,
        )
        completion = ChatCompletion(
            id=self.id,
            object="chat.completion",
            created=self.created,
            model=self.model,
            choices=[Choice(0, message, finish_reason_of(event.data))],
            usage=usage_of(event.data),
        )
        return Response(msgspec.json.encode(completion), media_type="application/json")


def data(payload: Any) -> str:
    """One SSE event of JSON, as the SDKs read them."""
    return f"data: {msgspec.json.encode(payload).decode()}\n\n"


def error_detail(event: StreamEvent) -> dict[str, Any]:
    code = event.data.get("code") or "chat_failed"
    message = event.data.get("message") or "The chat failed."
    return {"message": message, "type": "server_error", "param": None, "code": code}


async def first_event(
    events: AsyncIterator[StreamEvent | None],
) -> StreamEvent:
    """The chat's first event, keepalives skipped: the answer's status depends on it."""
    async for event in events:
        if event is not None:
            return event
    return streams.StreamEvent("", streams.ERROR, {"code": "stream_expired"})


def who(calling: auth.Caller, body: CompletionRequest) -> str:
    """The user: the session token's, X-User-Id's, or for a service key the body's `user`."""
    if calling.user_id is not None:
        return calling.user_id
    if body.user is not None and USER_ID.fullmatch(body.user):
        return body.user
    raise auth.Unauthenticated(
        "A service key must name the user it acts for: X-User-Id, or the request's `user`."
    )


@documented(
    Operation(
        "createChatCompletion",
        "chat",
        "OpenAI's Chat Completions",
        request=CompletionRequest,
        security=auth.USER,
        answers=[
            Answer(
                200,
                "The answer, whole; with `stream: true`, `text/event-stream` instead: "
                "`chat.completion.chunk` objects as the model sends them (the role, content "
                "and tool-call deltas, the finish reason, with `include_usage` a last chunk "
                "of usage), then `data: [DONE]`; a failure after output began is a last "
                '`data: {"error": ...}` and no `[DONE]`.',
                ChatCompletion,
            ),
            Answer(400, "A parameter is not valid (`param` names it).", OpenAIError),
            Answer(401, "The bearer is neither a session token nor a service key.", OpenAIError),
            Answer(402, "This month's token budget is used up.", OpenAIError),
            Answer(403, "The user was deleted in Clerk.", OpenAIError),
            Answer(413, "The body is over AIWRAP_MAX_CHAT_BYTES.", OpenAIError),
            Answer(
                429,
                "The user or this server holds as many open streams as allowed "
                "(AIWRAP_USER_MAX_STREAMS, AIWRAP_MAX_STREAMS), or the user sent as many "
                "chat requests this minute as AIWRAP_USER_REQUESTS_PER_MINUTE allows; retry "
                "after Retry-After.",
                OpenAIError,
                headers={"Retry-After": {"schema": {"type": "string"}}},
            ),
            Answer(502, "The model failed before any output.", OpenAIError),
            Answer(503, "Redis or Postgres is unavailable.", OpenAIError),
        ],
    )
)
async def create_completion(request: Request) -> Response:
    """Any OpenAI client's base URL: the same chat, queue, worker, record and metering as
    POST /v1/chat. Every answer carries X-Chat-Id, the chat's id for GET /v1/chat/{id}."""
    try:
        return await answer(request)
    except InvalidInput as error:
        return openai_error(400, str(error), error.code, error.field)
    except ApiError as error:
        return openai_error(error.status, error.message, error.code, None, error.headers)


async def answer(request: Request) -> Response:
    state = IngestState.of(request)
    calling = caller(request)  # credentials first: a 401 before any 400
    body = await read_model(request, CompletionRequest, state.settings.max_chat_bytes)
    user_id = who(calling, body)
    # The answer is read from a stream, so it takes a stream's slot, before the chat is
    # queued: a 429 here queues nothing.
    with state.streams.take(user_id) as slot:
        job = await start_chat(
            state,
            user_id,
            body.messages,
            model=body.model,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            params=body.params,
        )
        events = chat_events(state.stream_redis, job.id)
        first = await first_event(events)
        headers = {"X-Chat-Id": job.id}
        if first.event == streams.ERROR:  # refused or failed before any output: a status
            detail = error_detail(first)
            status = ENDED_BEFORE_OUTPUT.get(detail["code"], 502)
            return openai_error(status, detail["message"], detail["code"], headers=headers)
        writer = Writer(job.id, job.model)
        if not body.stream:
            response = await writer.whole(first, events)
            response.headers.update(headers)
            return response
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return HeldStream(
            writer.chunks(first, events, include_usage),
            slot=slot.pass_on(),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )


@documented(
    Operation(
        "listModels",
        "chat",
        "The models a chat may name",
        security=auth.USER,
        answers=[Answer(200, "The priced models, in OpenAI's list shape.", ModelList)],
    )
)
async def list_models(request: Request) -> Response:
    """The models aiwrap has a price for (built in, or AIWRAP_PRICES)."""
    state = IngestState.of(request)
    caller(request)
    cards = [
        ModelCard(id=name, object="model", created=0, owned_by="aiwrap")
        for name in sorted(prices(state.settings.prices_path))
    ]
    return Response(
        msgspec.json.encode(ModelList(object="list", data=cards)), media_type="application/json"
    )


routes: list[BaseRoute] = [
    Route("/v1/chat/completions", create_completion, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
