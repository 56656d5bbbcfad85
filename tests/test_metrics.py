"""Prometheus metrics: ingest's own, and the summed metrics of `aiwrap worker`."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from dramatiq import Message

from core.queues import APPLY_CLERK_EVENT, IDENTITY_QUEUE
from core.settings import Settings
from devstack.embedded import free_port
from workers.consumer import WakingRedisBroker
from workers.metrics import read_queue_depths

from .support import aiwrap_worker, eventually


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def scrape(http: httpx.Client, settings: Settings) -> str:
    """Ingest's /metrics, as a scraper with a service key reads it."""
    response = http.get("/metrics", headers={"Authorization": f"Bearer {settings.api_keys[0]}"})
    assert response.status_code == 200, response.text
    return response.text


def test_metrics_are_for_operators_only(http: httpx.Client, settings: Settings) -> None:
    assert http.get("/metrics").status_code == 401
    assert "aiwrap_http_requests_total" in scrape(http, settings)


def test_ingest_counts_requests_by_route_template_and_status(
    http: httpx.Client, settings: Settings
) -> None:
    def unauthorized(text: str) -> float:
        return sample(text, "aiwrap_http_requests_total", route="/v1/chat/{id}", status="401") or 0

    before = scrape(http, settings)
    for _ in range(3):
        assert http.get("/healthz").status_code == 200
    for _ in range(2):  # no credentials: 401, counted under the route's template
        http.get(f"/v1/chat/{uuid.uuid4()}")
    after = scrape(http, settings)
    healthz = sample(after, "aiwrap_http_requests_total", route="/healthz", status="200") or 0
    assert (
        healthz
        - (sample(before, "aiwrap_http_requests_total", route="/healthz", status="200") or 0)
        == 3
    )
    assert unauthorized(after) - unauthorized(before) == 2
    assert sample(after, "aiwrap_http_request_duration_seconds_count", route="/healthz")
    assert sample(after, "aiwrap_queue_depth", queue="identity") is not None
    assert sample(after, "aiwrap_queue_depth", queue="chat") is not None


def test_ingest_counts_webhook_verification_failures(
    http: httpx.Client, settings: Settings
) -> None:
    before = (
        sample(
            scrape(http, settings),
            "aiwrap_webhook_verification_failures_total",
            reason="missing_svix_headers",
        )
        or 0
    )
    response = http.post("/webhooks/clerk", content=b"{}")
    assert response.status_code == 400
    after = sample(
        scrape(http, settings),
        "aiwrap_webhook_verification_failures_total",
        reason="missing_svix_headers",
    )
    assert after == before + 1


@pytest.fixture
def worker_with_metrics(settings: Settings) -> Iterator[str]:
    port = free_port()
    process = aiwrap_worker(
        settings, "--processes", "2", "--threads", "2", "--metrics-port", str(port), "--grace", "5"
    )
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        process.terminate()
        process.wait(30)


def test_the_supervisor_serves_the_sum_of_its_processes_metrics(
    worker_with_metrics: str, broker: WakingRedisBroker, user_id: str
) -> None:
    now_ms = int(time.time() * 1000)
    event = {
        "type": "user.created",
        "timestamp": now_ms,
        "data": {"id": user_id, "updated_at": now_ms, "first_name": "Ada"},
    }
    for n in range(2):
        broker.enqueue(
            Message(
                queue_name=IDENTITY_QUEUE,
                actor_name=APPLY_CLERK_EVENT,
                args=(f"msg_{user_id}_{n}", event),
                kwargs={},
                options={},
            )
        )

    def processed(text: str) -> float:
        return sample(text, "dramatiq_messages_total", actor_name=APPLY_CLERK_EVENT) or 0

    def scraped() -> str:
        try:
            text = httpx.get(worker_with_metrics, timeout=2).text
        except httpx.HTTPError:
            return ""
        return text if processed(text) >= 2 else ""

    text = eventually(scraped, 60, "Dramatiq's Prometheus middleware to count both messages")
    assert sample(text, "aiwrap_queue_depth", queue="identity") is not None
    assert sample(text, "aiwrap_queue_depth", queue="chat") is not None


def test_queue_depth_is_exactly_the_messages_on_the_queue(
    http: httpx.Client, settings: Settings, broker: WakingRedisBroker
) -> None:
    broker.flush_all()  # the broker fixture's queues: nothing else is on them now
    ready, later = 3, 2
    for n in range(ready + later):
        broker.enqueue(
            Message(
                queue_name=IDENTITY_QUEUE,
                actor_name=APPLY_CLERK_EVENT,
                args=(f"msg_depth_{n}", {}),
                kwargs={},
                options={},
            ),
            delay=60_000 if n >= ready else None,  # a retry not yet due: the delay queue
        )
    ingest = scrape(http, settings)
    assert sample(ingest, "aiwrap_queue_depth", queue="identity") == ready + later
    assert sample(ingest, "aiwrap_queue_depth", queue="chat") == 0
    # The supervisor's scrape reads the same keys, through the sync client.
    assert read_queue_depths(broker.client) == {"identity": ready + later, "chat": 0}
    broker.flush_all()
