"""GET /healthz (the process is alive) and GET /readyz (its dependencies answer)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core.logs import get_logger

from .bodies import Alive, Readiness
from .openapi import Answer, Operation, documented
from .responses import BodyResponse
from .state import IngestState

log = get_logger(__name__)

#: Seconds each readiness probe may take before it counts as failed.
PROBE_TIMEOUT_S = 2.0


@documented(
    Operation("healthz", "operations", "Liveness", [Answer(200, "The process answers.", Alive)])
)
async def healthz(_request: Request) -> Response:
    """Touches nothing else: for a liveness probe."""
    return BodyResponse(Alive(status="ok"))


@documented(
    Operation(
        "readyz",
        "operations",
        "Readiness",
        [
            Answer(200, "Redis and Postgres answer.", Readiness),
            Answer(
                503,
                "Redis or Postgres does not answer; checks says which (`unavailable`), and "
                "the log says why.",
                Readiness,
            ),
        ],
    )
)
async def readyz(request: Request) -> Response:
    """Pings Redis and Postgres at once, each within 2 s."""
    state = IngestState.of(request)
    checks = {"redis": state.ping_redis(), "postgres": state.ping_postgres()}
    results = await asyncio.gather(
        *(asyncio.wait_for(check, PROBE_TIMEOUT_S) for check in checks.values()),
        return_exceptions=True,
    )
    # The public answer names what failed; why (the exception) is for the operator's log.
    failures = {
        name: "unavailable"
        for name, result in zip(checks, results, strict=True)
        if isinstance(result, BaseException)
    }
    for name, result in zip(checks, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("readiness_check_failed", check=name, error=type(result).__name__)
    body = Readiness(
        status="ready" if not failures else "unavailable",
        checks={name: failures.get(name, "ok") for name in checks},
    )
    return BodyResponse(body, 200 if not failures else 503)


routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz)]
