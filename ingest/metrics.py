"""Prometheus metrics of the ingest process, served at GET /metrics."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import redis
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from workers.broker import queue_sizes

from .state import IngestState

REQUESTS = Counter(
    "aiwrap_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "aiwrap_http_request_duration_seconds",
    "Time to answer an HTTP request (SSE: until closed).",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)
WEBHOOK_VERIFICATION_FAILURES = Counter(
    "aiwrap_webhook_verification_failures_total",
    "Clerk webhooks refused before enqueueing, by reason.",
    ["reason"],
)
QUEUE_DEPTH = Gauge(
    "aiwrap_queue_depth",
    "Messages waiting or in flight per queue (delayed retries included).",
    ["queue"],
)


#: The labelled children of REQUESTS and LATENCY by (route, method, status): looking
#: them up with labels() on every request costs more than updating them.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count a request answered and how long it took."""
    key = (route, method, status)
    try:
        requests, latency = _children[key]
    except KeyError:
        requests, latency = _children[key] = (
            REQUESTS.labels(route, method, str(status)),
            LATENCY.labels(route, method),
        )
    requests.inc()
    latency.observe(seconds)


async def metrics(request: Request) -> Response:
    state = IngestState.of(request)
    try:
        sizes = await anyio.to_thread.run_sync(queue_sizes, state.broker)
    except redis.RedisError:
        sizes = {}  # the scrape still answers while Redis is away, just without depths
    for queue, size in sizes.items():
        QUEUE_DEPTH.labels(queue).set(size)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, include_in_schema=False)]
