"""GET /healthz (the process is alive) and GET /readyz (its dependencies answer)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .state import IngestState

#: Seconds each readiness probe may take before it counts as failed.
PROBE_TIMEOUT_S = 2.0


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    state = IngestState.of(request)
    checks = {"redis": state.ping_redis(), "postgres": state.ping_postgres()}
    results = await asyncio.gather(
        *(asyncio.wait_for(check, PROBE_TIMEOUT_S) for check in checks.values()),
        return_exceptions=True,
    )
    failures = {
        name: f"{type(result).__name__}: {result}".rstrip(": ")
        for name, result in zip(checks, results, strict=True)
        if isinstance(result, BaseException)
    }
    body = {name: failures.get(name, "ok") for name in checks}
    status = 200 if not failures else 503
    return JSONResponse(
        {"status": "ready" if not failures else "unavailable", "checks": body}, status_code=status
    )


routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
