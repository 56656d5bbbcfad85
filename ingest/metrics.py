"""Prometheus metrics of the ingest process, served at GET /metrics."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

import redis
import redis.asyncio as aioredis
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.queues import depth_keys, queue_depths

from . import auth
from .openapi import Answer, Operation, documented
from .state import IngestState

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


class RequestStats:
    """Requests answered and how long they took, by route template.

    Counted in plain dicts and turned into Prometheus families only when
    scraped: prometheus_client's own Counter and Histogram take a lock for
    every update, three of them per request, which costs ingest more than
    anything else it does per request but the work itself. Every update
    and every scrape runs on ingest's one event loop thread, so nothing
    here needs a lock.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.answered: dict[tuple[str, str, int], int] = {}
        # Per (route, method): a count per bucket (the last is +Inf), then the sum.
        self.durations: dict[tuple[str, str], list[float]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.answered[key] = self.answered.get(key, 0) + 1
        try:
            counts = self.durations[route, method]
        except KeyError:
            counts = self.durations[route, method] = [0] * (len(self.buckets) + 2)
        counts[bisect.bisect_left(self.buckets, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        answered = CounterMetricFamily(
            "aiwrap_http_requests",
            "HTTP requests answered, by route template and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in self.answered.items():
            answered.add_metric([route, method, str(status)], count)
        yield answered
        durations = HistogramMetricFamily(
            "aiwrap_http_request_duration_seconds",
            "Time to answer an HTTP request (SSE: until closed).",
            labels=["route", "method"],
        )
        bounds = [*map(floatToGoString, self.buckets), "+Inf"]
        for (route, method), counts in self.durations.items():
            cumulative = list(itertools.accumulate(counts[:-1]))
            durations.add_metric(
                [route, method], list(zip(bounds, cumulative, strict=True)), sum_value=counts[-1]
            )
        yield durations


REQUESTS = RequestStats(
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)
)
REGISTRY.register(REQUESTS)


async def read_queue_depths(client: aioredis.Redis) -> dict[str, int]:
    """Messages waiting or in flight in each queue, delayed retries included."""
    async with client.pipeline(transaction=False) as pipe:
        for _queue, key in depth_keys():
            pipe.hlen(key)
        return queue_depths(await pipe.execute())


@documented(
    Operation(
        "metrics",
        "operations",
        "Prometheus metrics",
        [
            Answer(200, "Prometheus's text format.", media_type="text/plain"),
            Answer(401, "No service key: what the process counts is for its operators."),
        ],
        security=auth.SERVICE,
    )
)
async def metrics(request: Request) -> Response:
    """Requests by route and status, webhook refusals, queue depths, process facts, for a
    scraper that sends a service key (Prometheus: `authorization: {credentials: ...}`)."""
    state = IngestState.of(request)
    auth.require_service(auth.authenticate(request, state.settings))
    try:
        sizes = await read_queue_depths(state.redis)
    except redis.RedisError:
        sizes = {}  # the scrape still answers while Redis is away, just without depths
    for queue, size in sizes.items():
        QUEUE_DEPTH.labels(queue).set(size)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics)]
