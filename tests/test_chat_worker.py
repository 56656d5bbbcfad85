"""The chat actor against real Postgres, Redis, Dramatiq and the local model server: what
one chat streams, logs and meters, and how upstream failures and refusals end."""

from __future__ import annotations

import uuid

import dramatiq
import psycopg
import pytest
import redis as redis_lib

from core import streams
from core.jobs import new_job
from core.settings import Settings
from devstack.replies import count_tokens, reply_text
from workers.chat.actor import enqueue_chat
from workers.consumer import WakingRedisBroker

from .chat_worker_support import (
    JOIN_MS,
    Row,
    chat,
    events,
    log_row,
    streamed_text,
    terminal,
    upstream_requests,
    usage_rows,
)
from .support import behind_model


@pytest.fixture
def settings(settings: Settings, model_url: str) -> Settings:
    """The shared settings, with the local model server behind the worker."""
    return behind_model(settings, model_url)


def test_a_chat_is_streamed_logged_and_metered_exactly(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    job_id = chat(broker, worker, user_id, "hello there", max_tokens=50, temperature=0.5)

    row = log_row(db, job_id)
    assert row is not None
    expected = reply_text("hello there")
    assert row["completion"] == expected
    assert row["status"] == "ok"
    assert row["prompt"] == "hello there"
    assert row["prompt_tokens"] == count_tokens("hello there")
    assert row["completion_tokens"] == count_tokens(expected)
    assert row["latency_ms"] is not None
    meta = row["metadata"]
    assert meta["finish_reason"] == "stop"
    assert meta["ttft_ms"] > 0
    assert meta["usage_estimated"] is False
    assert meta["request"]["max_tokens"] == 50
    assert meta["request"]["temperature"] == 0.5
    assert meta["request"]["model"] == "gpt-4o-mini"

    [usage] = usage_rows(db, job_id)
    assert usage["user_id"] == user_id
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        row["prompt_tokens"],
        row["completion_tokens"],
    )
    assert usage["cost_microcents"] == 15 * row["prompt_tokens"] + 60 * row["completion_tokens"]

    evs = events(redis, job_id)
    assert streamed_text(evs) == expected
    assert len([e for e in evs if e.event == "delta"]) > 5  # piece by piece, not at the end
    end = terminal(evs)
    assert end.event == "done"
    assert end.data == {
        "status": "ok",
        "finish_reason": "stop",
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "cost_microcents": usage["cost_microcents"],
    }
    assert redis.hget(streams.job_key(job_id), "status") == b"ok"
    assert 0 < redis.ttl(streams.events_key(job_id)) <= 3600
    # An unknown user was provisioned so that every foreign key resolves.
    profile = db.execute(
        "SELECT monthly_token_budget FROM user_profiles WHERE user_id = %s", (user_id,)
    ).fetchone()
    assert profile is not None


def test_without_usage_from_the_upstream_the_tokens_are_estimated_and_flagged(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    user_id: str,
) -> None:
    job_id = chat(broker, worker, user_id, "count me [[no_usage=1]]")

    row = log_row(db, job_id)
    assert row is not None and row["status"] == "ok"
    assert row["metadata"]["usage_estimated"] is True
    assert row["completion_tokens"] == count_tokens(row["completion"])
    assert row["prompt_tokens"] > 0
    [usage] = usage_rows(db, job_id)
    assert usage["completion_tokens"] == row["completion_tokens"]


def test_a_stream_cut_after_text_ends_as_error_with_the_text_kept_and_metered(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    before = upstream_requests(model_url)
    job_id = chat(broker, worker, user_id, "cut me [[cut_after=4]]")

    assert upstream_requests(model_url) == before + 1  # text came: no retry
    row = log_row(db, job_id)
    assert row is not None and row["status"] == "error"
    assert row["completion"] == "You said: cut"
    assert row["metadata"]["finish_reason"] is None
    assert row["metadata"]["usage_estimated"] is True
    [usage] = usage_rows(db, job_id)
    assert usage["completion_tokens"] == 4
    evs = events(redis, job_id)
    assert streamed_text(evs) == "You said: cut"
    assert terminal(evs).event == "error"
    assert redis.hget(streams.job_key(job_id), "status") == b"error"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_upstream_failure_before_any_text_is_retried(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    status: int,
) -> None:
    key = uuid.uuid4().hex
    job_id = chat(broker, worker, user_id, f"again [[fail_before={status} fail_times=2 key={key}]]")

    row = log_row(db, job_id)
    assert row is not None and row["status"] == "ok", row
    assert row["metadata"]["upstream_calls"] == 3
    assert row["completion"] == reply_text("again")
    assert len(usage_rows(db, job_id)) == 1
    assert streamed_text(events(redis, job_id)) == reply_text("again")


def test_an_upstream_that_keeps_failing_ends_as_error_without_metering(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
) -> None:
    job_id = chat(broker, worker, user_id, f"never [[fail_before=502 key={uuid.uuid4().hex}]]")

    row = log_row(db, job_id)
    assert row is not None and row["status"] == "error"
    assert row["metadata"]["upstream_calls"] == 5
    assert row["metadata"]["error"]["code"] == "upstream_error"
    assert usage_rows(db, job_id) == []
    end = terminal(events(redis, job_id))
    assert end.event == "error" and end.data["code"] == "upstream_error"


def test_a_content_filter_finish_is_logged_as_filtered(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
) -> None:
    job_id = chat(broker, worker, user_id, "naughty [[filter=1]]")

    row = log_row(db, job_id)
    assert row is not None and row["status"] == "filtered"
    assert row["metadata"]["finish_reason"] == "content_filter"
    assert len(usage_rows(db, job_id)) == 1
    end = terminal(events(redis, job_id))
    assert end.event == "done"
    assert end.data["status"] == "filtered"
    assert end.data["finish_reason"] == "content_filter"


def test_a_content_policy_refusal_is_logged_as_filtered_and_not_retried(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    before = upstream_requests(model_url)
    job_id = chat(broker, worker, user_id, "forbidden [[refuse=1]]")

    assert upstream_requests(model_url) == before + 1
    row = log_row(db, job_id)
    assert row is not None and row["status"] == "filtered"
    assert "content policy" in row["metadata"]["refusal"]
    assert usage_rows(db, job_id) == []  # a rejected request costs nothing
    end = terminal(events(redis, job_id))
    assert end.event == "done" and end.data["status"] == "filtered"


def test_a_user_over_budget_is_refused_before_any_model_call(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    first = chat(broker, worker, user_id, "spend")
    spent = log_row(db, first)
    assert spent is not None
    budget = spent["prompt_tokens"] + spent["completion_tokens"]
    db.execute(
        "UPDATE user_profiles SET monthly_token_budget = %s WHERE user_id = %s", (budget, user_id)
    )

    before = upstream_requests(model_url)
    job_id = chat(broker, worker, user_id, "more please")

    assert upstream_requests(model_url) == before
    row = log_row(db, job_id)
    assert row is not None and row["status"] == "error"
    assert row["metadata"]["error"]["code"] == "budget_exceeded"
    assert usage_rows(db, job_id) == []
    evs = events(redis, job_id)
    assert [e.event for e in evs] == ["error"]
    assert evs[0].data["code"] == "budget_exceeded"


def test_a_zero_budget_means_no_cap(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    user_id: str,
) -> None:
    chat(broker, worker, user_id, "one")
    db.execute("UPDATE user_profiles SET monthly_token_budget = 0 WHERE user_id = %s", (user_id,))
    job_id = chat(broker, worker, user_id, "two")
    row = log_row(db, job_id)
    assert row is not None and row["status"] == "ok"


def test_an_unpriced_model_is_refused_before_any_model_call(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    before = upstream_requests(model_url)
    job = new_job(user_id, [{"role": "user", "content": "hi"}], model="mystery-model")
    job_id = enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    assert upstream_requests(model_url) == before
    row = log_row(db, job_id)
    assert row is not None and row["metadata"]["error"]["code"] == "model_not_priced"
    assert terminal(events(redis, job_id)).data["code"] == "model_not_priced"


def test_a_deleted_user_is_refused_without_rows_or_a_model_call(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    db.execute("INSERT INTO user_tombstones (user_id, deleted_at) VALUES (%s, now())", (user_id,))
    before = upstream_requests(model_url)
    job_id = chat(broker, worker, user_id, "I am gone")

    assert upstream_requests(model_url) == before
    assert log_row(db, job_id) is None
    assert db.execute('SELECT 1 FROM "user" WHERE id = %s', (user_id,)).fetchone() is None
    evs = events(redis, job_id)
    assert [e.event for e in evs] == ["error"]
    assert evs[0].data["code"] == "user_deleted"
