"""The chat and identity actors count what they meter, refuse and fail, for Prometheus."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
import psycopg
import pytest
from dramatiq import Message
from prometheus_client import REGISTRY

from core.jobs import new_job
from core.queues import APPLY_CLERK_EVENT, CHAT_QUEUE, IDENTITY_QUEUE
from core.settings import Settings
from workers.chat.actor import enqueue_chat
from workers.consumer import WakingRedisBroker

from .chat_worker_support import JOIN_MS
from .support import behind_model


@pytest.fixture
def settings(settings: Settings, model_url: str) -> Settings:
    return behind_model(settings, model_url)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def run_chat(broker: WakingRedisBroker, worker: dramatiq.Worker, user_id: str, content: str) -> str:
    job = new_job(user_id, [{"role": "user", "content": content}], model="gpt-4o-mini")
    job_id = enqueue_chat(broker, job)
    broker.join(CHAT_QUEUE, timeout=JOIN_MS)
    worker.join()
    return job_id


def test_a_metered_chat_counts_its_tokens_cost_and_time_to_first_token(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Any],
    user_id: str,
) -> None:
    model = {"model": "gpt-4o-mini"}
    before = (
        value("aiwrap_tokens_metered_total", kind="completion", **model),
        value("aiwrap_cost_microcents_total", **model),
        value("aiwrap_time_to_first_token_seconds_count", **model),
    )
    job_id = run_chat(broker, worker, user_id, "count me")
    row = db.execute(
        "SELECT completion_tokens, cost_microcents FROM token_usage WHERE prompt_log_id = %s",
        [job_id],
    ).fetchone()
    assert row is not None
    assert (
        value("aiwrap_tokens_metered_total", kind="completion", **model) - before[0]
        == (row["completion_tokens"])
    )
    assert value("aiwrap_cost_microcents_total", **model) - before[1] == row["cost_microcents"]
    assert value("aiwrap_time_to_first_token_seconds_count", **model) - before[2] == 1


def test_upstream_errors_are_counted_by_kind(
    broker: WakingRedisBroker, worker: dramatiq.Worker, user_id: str
) -> None:
    before = value("aiwrap_upstream_errors_total", kind="rate_limited")
    run_chat(broker, worker, user_id, f"[[fail_before=429 fail_times=2 key={user_id}]] hi")
    assert value("aiwrap_upstream_errors_total", kind="rate_limited") - before == 2


def test_budget_refusals_are_counted(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Any],
    user_id: str,
) -> None:
    run_chat(broker, worker, user_id, "spend it")
    db.execute("UPDATE user_profiles SET monthly_token_budget = 1 WHERE user_id = %s", [user_id])
    before = value("aiwrap_budget_refusals_total")
    run_chat(broker, worker, user_id, "one more")
    assert value("aiwrap_budget_refusals_total") - before == 1


def test_identity_events_are_counted_by_type_and_outcome(
    broker: WakingRedisBroker, worker: dramatiq.Worker, user_id: str
) -> None:
    now_ms = int(time.time() * 1000)
    event = {
        "type": "user.created",
        "timestamp": now_ms,
        "data": {"id": user_id, "updated_at": now_ms},
    }
    changed = value("aiwrap_identity_events_total", type="user.created", outcome="changed")
    duplicate = value("aiwrap_identity_events_total", type="user.created", outcome="duplicate")
    for _ in range(2):  # the same delivery twice
        broker.enqueue(
            Message(
                queue_name=IDENTITY_QUEUE,
                actor_name=APPLY_CLERK_EVENT,
                args=(f"msg_{user_id}", event),
                kwargs={},
                options={},
            )
        )
        broker.join(IDENTITY_QUEUE, timeout=JOIN_MS)
        worker.join()
    assert (
        value("aiwrap_identity_events_total", type="user.created", outcome="changed") - changed == 1
    )
    assert (
        value("aiwrap_identity_events_total", type="user.created", outcome="duplicate") - duplicate
        == 1
    )
