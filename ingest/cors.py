"""CORS for the /v1 routes: the pages of AIWRAP_CORS_ORIGINS may call them from a browser.

Only the origins named (never `*`), only /v1, with the headers a Clerk-authenticated page
sends (Authorization, Content-Type) and the ones it may read (X-Chat-Id, X-Request-Id).
The webhook and ops routes answer no preflight: no browser has business there.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


class ApiCors:
    """Starlette's CORSMiddleware, for the paths under /v1 only."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-Id"],
            expose_headers=["X-Chat-Id", "X-Request-Id", "Retry-After"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
