"""Prometheus metrics of the worker processes.

`aiwrap worker` gives all its processes one multiprocess directory
(PROMETHEUS_MULTIPROC_DIR, set before any of them starts) and serves their sum,
with Dramatiq's own middleware metrics and the depth of each queue, on its
--metrics-port. Outside the supervisor these are plain in-process metrics.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.queues import depth_keys, queue_depths

TOKENS = Counter(
    "aiwrap_tokens_metered_total",
    "Tokens metered in token_usage, by model and kind.",
    ["model", "kind"],
)
COST = Counter(
    "aiwrap_cost_microcents_total",
    "Cost metered in token_usage, in micro-cents, by model.",
    ["model"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "aiwrap_time_to_first_token_seconds",
    "From the upstream request to its first text.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
UPSTREAM_ERRORS = Counter(
    "aiwrap_upstream_errors_total",
    "Failed upstream model calls, by kind (rate_limited, server_error, timeout, "
    "connection, cut_off, refused, bad_request).",
    ["kind"],
)
BUDGET_REFUSALS = Counter(
    "aiwrap_budget_refusals_total",
    "Chats refused before any model call: budget reached.",
)
IDENTITY_EVENTS = Counter(
    "aiwrap_identity_events_total",
    "Clerk events applied, by type and outcome.",
    ["type", "outcome"],
)


def prepare_multiprocess_dir() -> Path:
    """Make an empty directory for this supervisor's processes and export it.

    Must run before any worker process starts: prometheus_client and Dramatiq's
    Prometheus middleware read it when they are first imported.
    """
    path = Path(tempfile.mkdtemp(prefix="aiwrap-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    os.environ["dramatiq_prom_db"] = str(path)  # noqa: SIM112 - Dramatiq reads it in lower case
    return path


def remove_multiprocess_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def mark_process_dead(path: Path, pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


class QueueDepthCollector(Collector):
    """The number of messages in each queue, read from Redis at scrape time."""

    def __init__(self, sizes: Callable[[], dict[str, int]]) -> None:
        self.sizes = sizes

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "aiwrap_queue_depth", "Messages waiting or in flight per queue.", labels=["queue"]
        )
        try:
            for queue, size in self.sizes().items():
                gauge.add_metric([queue], size)
        except redis.RedisError:
            pass  # the scrape still answers while Redis is away, just without depths
        yield gauge


def serve_metrics(path: Path, port: int, host: str, sizes: Callable[[], dict[str, int]]) -> None:
    """Serve the sum of every worker process's metrics, plus queue depth, on host:port."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    registry.register(QueueDepthCollector(sizes))
    start_http_server(port, addr=host, registry=registry)


def read_queue_depths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting or in flight in each queue, delayed retries included."""
    with client.pipeline(transaction=False) as pipe:
        for _queue, key in depth_keys():
            pipe.hlen(key)
        return queue_depths(pipe.execute())
