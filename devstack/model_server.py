"""A local OpenAI-compatible model server for `aiwrap dev` and the tests.

Routes: `POST /v1/chat/completions` (JSON or SSE), `GET /v1/models`, `GET /healthz`, and
`GET /_stats`. What it answers, and how a test steers it with `[[key=value]]`
directives, is devstack/replies.py. Run it with `aiwrap model-server`, `serve(host,
port)`, or in-process with `running_model_server()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .replies import (
    FINGERPRINT,
    MODELS,
    STATS_SIZE,
    ChatRequest,
    Completion,
    RequestFailed,
    StreamCut,
    count_tokens,
    parse_chat_request,
    plan_completion,
)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class ModelServer:
    """One process's failure counters and stats, and the routes that use them."""

    def __init__(self) -> None:
        self.fail_counts: dict[str, int] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=STATS_SIZE)
        self.totals = {
            "received": 0,
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "failed": 0,
        }
        #: Streamed replies in progress now, and the most there have been at once.
        self.streams = {"open": 0, "peak": 0}

    def check_failures(self, chat: ChatRequest) -> None:
        """Raise the failure a request's directives ask for, if any."""
        s = chat.switches
        if s.get("refuse"):
            message = "This request was rejected by the content policy."
            raise RequestFailed(400, message, "content_policy_violation")
        if "fail_before" not in s:
            return
        seen = self.fail_counts.get(chat.directive_text, 0)
        self.fail_counts[chat.directive_text] = seen + 1
        if "fail_times" not in s or seen < s["fail_times"]:
            code = "rate_limit_exceeded" if s["fail_before"] == 429 else "injected_failure"
            raise RequestFailed(s["fail_before"], "Failure injected by fail_before.", code)

    def record(self, completion: Completion) -> None:
        self.recent.append(completion.stats())
        self.totals["requests"] += 1
        self.totals["prompt_tokens"] += completion.chat.prompt_tokens
        self.totals["completion_tokens"] += completion.sent

    async def chat_completions(self, request: Request) -> Response:
        started = time.perf_counter()
        self.totals["received"] += 1
        try:
            chat = parse_chat_request(await request.body())
            self.check_failures(chat)
        except RequestFailed as failed:
            self.totals["failed"] += 1
            return failed.response()
        completion = plan_completion(chat, started)
        if chat.stream:
            events, no_cache = self.stream(completion), {"cache-control": "no-cache"}
            return StreamingResponse(events, media_type="text/event-stream", headers=no_cache)
        s, n, finish = chat.switches, len(completion.pieces), completion.finish
        await asyncio.sleep((s.get("ttft_ms", 0) + s.get("delay_ms", 0) * (n - 1)) / 1e3)
        completion.sent = n
        completion.mark_first_token()  # a JSON reply's first token arrives with its last
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(completion.pieces),
            "refusal": None,
        }
        if completion.tool_call is not None:
            call_id, name, parts = completion.tool_call
            function = {"name": name, "arguments": "".join(parts)}
            message |= {
                "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": function}],
            }
            completion.sent = count_tokens("".join(parts))
        self.record(completion)
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        body = {**completion.envelope("chat.completion"), "choices": [choice]}
        if not s.get("no_usage"):
            body["usage"] = completion.usage()
        return JSONResponse(body)

    async def stream(self, completion: Completion) -> AsyncIterator[bytes]:
        """Yield the SSE events of one streamed completion, counted as open until it ends."""
        self.streams["open"] += 1
        self.streams["peak"] = max(self.streams["peak"], self.streams["open"])
        try:
            async for event in self._events(completion):
                yield event
        finally:
            self.streams["open"] -= 1

    async def _events(self, completion: Completion) -> AsyncIterator[bytes]:
        s, pieces = completion.chat.switches, completion.pieces
        head = completion.envelope("chat.completion.chunk")
        tail = {"usage": None} if completion.chat.include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse({**head, "choices": [choice], **tail})

        await asyncio.sleep(s.get("ttft_ms", 0) / 1e3)
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        if completion.tool_call is not None:
            call_id, name, parts = completion.tool_call
            completion.mark_first_token()
            first = {"index": 0, "id": call_id, "type": "function"}
            yield chunk({"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]})
            for part in parts:
                await asyncio.sleep(s.get("delay_ms", 0) / 1e3)
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            completion.sent = count_tokens("".join(parts))
        for piece in pieces[: s.get("cut_after")]:
            if completion.sent:
                await asyncio.sleep(s.get("delay_ms", 0) / 1e3)
            else:
                completion.mark_first_token()
            yield chunk({"content": piece})
            completion.sent += 1
        if s.get("cut_after", len(pieces) + 1) <= len(pieces):
            completion.finish = None
            self.record(completion)
            raise StreamCut(f"cut_after={completion.sent}")
        yield chunk({}, completion.finish)
        if completion.chat.include_usage and not s.get("no_usage"):
            yield _sse({**head, "choices": [], "usage": completion.usage()})
        self.record(completion)
        yield b"data: [DONE]\n\n"

    async def models(self, _request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": FINGERPRINT}
            for m in MODELS
        ]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(self, _request: Request) -> Response:
        return JSONResponse(
            {"totals": self.totals, "streams": self.streams, "recent": list(self.recent)}
        )


def _not_a_stream_cut(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], StreamCut))


@asynccontextmanager
async def _lifespan(_app: Starlette) -> AsyncIterator[None]:
    # Hide uvicorn's traceback for each deliberate cut. Added here, after uvicorn has
    # configured logging, so its dictConfig cannot drop the filter.
    logging.getLogger("uvicorn.error").addFilter(_not_a_stream_cut)
    yield


def create_app() -> Starlette:
    """Build a model server app with its own counters and stats."""
    server = ModelServer()
    return Starlette(
        routes=[
            Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/healthz", server.healthz, methods=["GET"]),
            Route("/_stats", server.stats, methods=["GET"]),
        ],
        lifespan=_lifespan,
    )


app = create_app()


def serve(host: str, port: int) -> None:
    """Run the model server under uvicorn until interrupted, logging only warnings."""
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@contextmanager
def running_model_server(timeout: float = 10.0) -> Iterator[str]:
    """Run a fresh server on a free loopback port in a thread; yield its `.../v1` base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # log_config=None leaves the host process's logging as it is.
    config = uvicorn.Config(create_app(), log_config=None, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("The model server did not start.")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
