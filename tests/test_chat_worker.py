"""The chat actor against real Postgres, Redis, Dramatiq and the local model server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import psycopg
import pytest
import redis as redis_lib

from ingest.model_server import count_tokens, reply_text, running_model_server
from workers import chat as chat_actor
from workers import streams
from workers.broker import WakingRedisBroker, build_broker
from workers.chat import enqueue_chat, new_job
from workers.identity import should_retry
from workers.settings import Settings

Row = dict[str, Any]
JOIN_MS = 30_000


@pytest.fixture
def settings(settings: Settings, model_url: str) -> Settings:
    return replace(settings, openai_base_url=model_url, openai_api_key="test-key")


def stats(model_url: str) -> dict[str, Any]:
    return httpx.get(model_url.removesuffix("/v1") + "/_stats", timeout=5).json()  # type: ignore[no-any-return]


def upstream_requests(model_url: str) -> int:
    """Requests the model server has received, whatever became of them."""
    return int(stats(model_url)["totals"]["received"])


def events(redis: redis_lib.Redis, job_id: str) -> list[streams.StreamEvent]:
    entries: Any = redis.xrange(streams.events_key(job_id))
    return [
        streams.StreamEvent(
            i.decode(),
            f[b"event"].decode(),
            json.loads(f[b"data"]),
        )
        for i, f in entries
    ]


def streamed_text(evs: list[streams.StreamEvent]) -> str:
    return "".join(e.data["content"] for e in evs if e.event == "delta")


def terminal(evs: list[streams.StreamEvent]) -> streams.StreamEvent:
    ends = [e for e in evs if e.terminal]
    assert len(ends) == 1, evs
    assert evs[-1] is ends[0]
    return ends[0]


def log_row(db: psycopg.Connection[Row], job_id: str) -> Row | None:
    return db.execute("SELECT * FROM prompt_logs WHERE id = %s", (job_id,)).fetchone()


def usage_rows(db: psycopg.Connection[Row], job_id: str) -> list[Row]:
    return db.execute("SELECT * FROM token_usage WHERE prompt_log_id = %s", (job_id,)).fetchall()


def chat(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    user_id: str,
    content: str,
    **options: Any,
) -> str:
    """Enqueue one chat, wait until the worker has run it, return its id."""
    job = new_job(user_id, [{"role": "user", "content": content}], model="gpt-4o-mini", **options)
    job_id = enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()
    return job_id


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


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


def test_a_redelivered_finished_job_does_nothing(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    job = new_job(user_id, [{"role": "user", "content": "once"}], model="gpt-4o-mini")
    enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()
    first = events(redis, job["id"])
    before = upstream_requests(model_url)

    enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    assert upstream_requests(model_url) == before
    assert events(redis, job["id"]) == first
    assert len(usage_rows(db, job["id"])) == 1


def test_a_job_run_again_mid_stream_continues_the_stream_without_gaps_or_repeats(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
) -> None:
    # What a worker that died mid-stream leaves behind: an open row and half a stream.
    job = new_job(user_id, [{"role": "user", "content": "resume"}], model="gpt-4o-mini")
    expected = reply_text("resume")
    db.execute('INSERT INTO "user" (id) VALUES (%s)', (user_id,))
    db.execute(
        "INSERT INTO prompt_logs (id, user_id, model, prompt, metadata) "
        "VALUES (%s, %s, 'gpt-4o-mini', 'resume', '{\"state\": \"running\", \"attempt\": 1}')",
        (job["id"], user_id),
    )
    for piece in ("You", " said", ": res"):  # the last piece ends inside a token
        redis.xadd(
            streams.events_key(job["id"]),
            {"event": "delta", "data": json.dumps({"content": piece})},
        )

    enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    evs = events(redis, job["id"])
    assert streamed_text(evs) == expected
    assert terminal(evs).event == "done"
    row = log_row(db, job["id"])
    assert row is not None and row["completion"] == expected and row["status"] == "ok"
    assert row["metadata"]["request"]["model"] == "gpt-4o-mini"
    assert "resume_diverged" not in row["metadata"]
    assert len(usage_rows(db, job["id"])) == 1


def test_a_chat_cancelled_before_it_starts_never_calls_the_model(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    job = new_job(user_id, [{"role": "user", "content": "stop"}], model="gpt-4o-mini")
    redis.set(streams.cancel_key(job["id"]), "1", ex=60)
    before = upstream_requests(model_url)
    enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    assert upstream_requests(model_url) == before
    row = log_row(db, job["id"])
    assert row is not None and row["metadata"]["error"]["code"] == "cancelled"
    assert usage_rows(db, job["id"]) == []


def test_a_chat_cancelled_mid_stream_stops_promptly_and_keeps_the_partial_answer(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
) -> None:
    job = new_job(
        user_id,
        [{"role": "user", "content": "long [[delay_ms=50 words=400]]"}],
        model="gpt-4o-mini",
    )
    enqueue_chat(broker, job)
    wait_for(lambda: len(events(redis, job["id"])) >= 3, 15, "the first deltas")
    cancelled_at = time.monotonic()
    redis.set(streams.cancel_key(job["id"]), "1", ex=60)
    redis.publish(streams.CANCEL_CHANNEL, job["id"])
    wait_for(lambda: any(e.terminal for e in events(redis, job["id"])), 10, "the end")
    assert time.monotonic() - cancelled_at < 1.0  # 400 words at 50 ms would take 20 s
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    evs = events(redis, job["id"])
    assert terminal(evs).data["code"] == "cancelled"
    row = log_row(db, job["id"])
    assert row is not None and row["status"] == "error"
    assert row["metadata"]["cancelled"] is True
    assert row["completion"] == streamed_text(evs)
    assert 0 < len(row["completion"]) < len(reply_text("long", 400))
    [usage] = usage_rows(db, job["id"])
    assert usage["completion_tokens"] == count_tokens(row["completion"])


def test_many_chats_at_once_meter_exactly_what_the_model_server_reported(
    settings: Settings,
    db: psycopg.Connection[Row],
    user_id: str,
) -> None:
    count = 60
    with running_model_server() as url:
        own = replace(settings, openai_base_url=url)
        broker = build_broker(own)
        dramatiq.set_broker(broker)
        worker = dramatiq.Worker(broker, worker_threads=count, worker_timeout=100)
        worker.start()
        try:
            started = time.monotonic()
            ids = [
                enqueue_chat(
                    broker,
                    new_job(
                        user_id,
                        [{"role": "user", "content": f"chat {i} [[delay_ms=20 words={i}]]"}],
                        model="gpt-4o-mini",
                    ),
                )
                for i in range(count)
            ]
            broker.join("chat", timeout=JOIN_MS)
            worker.join()
            elapsed = time.monotonic() - started
        finally:
            worker.stop()
            broker.close()
        reported = stats(url)["totals"]

    assert reported["requests"] == count
    rows = db.execute(
        "SELECT count(*) AS n, sum(prompt_tokens) AS p, sum(completion_tokens) AS c, "
        "sum(cost_microcents) AS cost FROM token_usage WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    assert rows is not None
    assert rows["n"] == count
    assert (rows["p"], rows["c"]) == (reported["prompt_tokens"], reported["completion_tokens"])
    assert rows["cost"] == 15 * rows["p"] + 60 * rows["c"]
    statuses = db.execute(
        "SELECT status, count(*) AS n FROM prompt_logs WHERE id = ANY(%s::uuid[]) GROUP BY 1",
        (ids,),
    ).fetchall()
    assert statuses == [{"status": "ok", "n": count}]
    # Run one after another they would take over 30 s (~65 pieces * 20 ms each, on average).
    assert elapsed < 10


@pytest.mark.slow
def test_a_worker_process_killed_mid_stream_is_replaced_and_the_chat_ends_complete(
    broker: WakingRedisBroker,
    settings: Settings,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    tmp_path: Path,
) -> None:
    job = new_job(
        user_id,
        [{"role": "user", "content": "crash [[delay_ms=40 words=80]]"}],
        model="gpt-4o-mini",
    )
    expected = reply_text("crash", 80)
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "OPENAI_BASE_URL": settings.openai_base_url,
        "OPENAI_API_KEY": "test-key",
        "AIWRAP_LOG_LEVEL": "WARNING",
    }
    log_file = (tmp_path / "worker.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "worker", "--processes", "1", "--queues", "chat"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    try:
        enqueue_chat(broker, job)
        try:
            wait_for(lambda: len(events(redis, job["id"])) >= 5, 30, "the first deltas")
        except AssertionError:
            raise AssertionError((tmp_path / "worker.log").read_text()[-3000:]) from None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log_file.close()
    streamed_before_crash = streamed_text(events(redis, job["id"]))
    assert 0 < len(streamed_before_crash) < len(expected)
    row = log_row(db, job["id"])
    assert row is not None and row["completion"] is None  # in flight when it died

    # A new worker takes the message once the dead one's heartbeat has expired.
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        wait_for(lambda: any(e.terminal for e in events(redis, job["id"])), 60, "the rerun")
    finally:
        worker.stop()

    evs = events(redis, job["id"])
    assert streamed_text(evs) == expected  # no gap, no repeat
    assert terminal(evs).event == "done"
    row = log_row(db, job["id"])
    assert row is not None and row["status"] == "ok" and row["completion"] == expected
    assert row["metadata"]["attempt"] == 2
    assert len(usage_rows(db, job["id"])) == 1


def test_a_worker_ahead_of_the_schema_retries_instead_of_dropping_jobs(
    db: psycopg.Connection[Row],
) -> None:
    # What a worker deployed before `aiwrap migrate` gets from Postgres.
    with pytest.raises(psycopg.errors.UndefinedFunction) as missing:
        db.execute("SELECT * FROM aiwrap_begin_chat_from_a_later_release()")
    assert chat_actor._should_retry(0, missing.value)
    assert not chat_actor._should_retry(chat_actor.MAX_RUN_RETRIES, missing.value)
    assert should_retry(100, missing.value)
