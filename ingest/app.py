"""The Starlette app: routes, lifespan and middleware, nothing else."""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import InvalidInput
from core.logs import TurnLog, configure_logging, get_logger
from core.settings import Settings

from . import (
    admin,
    chat,
    completions,
    docs,
    health,
    history,
    metrics,
    openapi,
    sse,
    webhooks,
)
from .cors import ApiCors
from .errors import ApiError, handle_api_error, handle_http_exception, handle_invalid_input
from .state import IngestState

log = get_logger("ingest")

#: A caller's X-Request-Id that is kept as the request's id.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,64}")


class RequestContext:
    """Binds a request id to every log line of a request, and logs the request once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = TurnLog("ingest")
        # A random prefix per process and a counter: unique, and far cheaper per
        # request than uuid4, which reads the kernel's random pool every time.
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count(1)

    def new_request_id(self) -> str:
        return f"{self._prefix}{next(self._counter):010x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            try:
                await self.app(scope, receive, send)
            finally:
                self.log.flush()  # at the lifespan's end, the last requests' lines
            return
        request_id = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                # A caller's id is kept only when it is well formed; anything else
                # (spaces, quotes, control characters, a novel) gets an id of ours.
                if REQUEST_ID.fullmatch(value):
                    request_id = value.decode("ascii")
                break
        request_id = request_id or self.new_request_id()
        status = 500
        started = time.perf_counter()

        # A function that returns send's awaitable rather than a coroutine of its
        # own: every response message would otherwise pass through one more frame.
        def send_with_id(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                ]
            return send(message)

        # Tokens rather than bound_contextvars(), which reads the whole context
        # to restore it: this runs once per request.
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            metrics.REQUESTS.observe(template, scope["method"], status, elapsed)
            self.log.info(
                "request",
                request_id=request_id,
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.reset_contextvars(**bound)


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the ingest app; settings default to the process environment."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = IngestState.build(settings)
        app.state.aiwrap = state
        await state.open()
        if not settings.clerk_webhook_secret:
            log.error(
                "clerk_webhook_secret_missing",
                detail="CLERK_WEBHOOK_SECRET is not set: /webhooks/clerk answers 500.",
            )
        log.info("ingest_started")
        try:
            yield
        finally:
            await state.close()
            log.info("ingest_stopped")

    return Starlette(
        routes=[
            # First: routes are tried in order, and this is the busiest one.
            *webhooks.routes,
            *health.routes,
            *metrics.routes,
            *openapi.routes,
            *docs.routes,
            *completions.routes,
            *chat.routes,
            *sse.routes,
            *history.routes,
            *admin.routes,
        ],
        middleware=[
            Middleware(RequestContext),
            *(
                [Middleware(ApiCors, origins=settings.cors_origins)]
                if settings.cors_origins
                else []
            ),
        ],
        exception_handlers={
            ApiError: handle_api_error,
            InvalidInput: handle_invalid_input,
            HTTPException: handle_http_exception,
        },
        lifespan=lifespan,
    )
