"""The chat actor when a job runs twice, is cancelled, runs beside hundreds of others, or
loses its process: no gap, no repeat, nothing metered twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import dramatiq
import psycopg
import pytest
import redis as redis_lib

from core import streams
from core.jobs import new_job
from core.settings import Settings
from devstack.model_server import running_model_server
from devstack.replies import count_tokens, reply_text
from workers.broker import build_broker
from workers.chat import actor as chat_actor
from workers.chat.actor import enqueue_chat
from workers.consumer import WakingRedisBroker
from workers.identity.actor import should_retry

from .chat_worker_support import (
    JOIN_MS,
    Row,
    events,
    log_row,
    stats,
    streamed_text,
    terminal,
    upstream_requests,
    usage_rows,
)
from .support import behind_model, eventually


@pytest.fixture
def settings(settings: Settings, model_url: str) -> Settings:
    """The shared settings, with the local model server behind the worker."""
    return behind_model(settings, model_url)


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
    first = events(redis, job.id)
    before = upstream_requests(model_url)

    enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    assert upstream_requests(model_url) == before
    assert events(redis, job.id) == first
    assert len(usage_rows(db, job.id)) == 1


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
        (job.id, user_id),
    )
    for piece in ("You", " said", ": res"):  # the last piece ends inside a token
        redis.xadd(
            streams.events_key(job.id),
            {"event": "delta", "data": json.dumps({"content": piece})},
        )

    enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    evs = events(redis, job.id)
    assert streamed_text(evs) == expected
    assert terminal(evs).event == "done"
    row = log_row(db, job.id)
    assert row is not None and row["completion"] == expected and row["status"] == "ok"
    assert row["metadata"]["request"]["model"] == "gpt-4o-mini"
    assert "resume_diverged" not in row["metadata"]
    assert len(usage_rows(db, job.id)) == 1


def test_a_chat_cancelled_before_it_starts_never_calls_the_model(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
    model_url: str,
) -> None:
    job = new_job(user_id, [{"role": "user", "content": "stop"}], model="gpt-4o-mini")
    redis.set(streams.cancel_key(job.id), "1", ex=60)
    before = upstream_requests(model_url)
    enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    assert upstream_requests(model_url) == before
    row = log_row(db, job.id)
    assert row is not None and row["metadata"]["error"]["code"] == "cancelled"
    assert usage_rows(db, job.id) == []


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
    eventually(lambda: len(events(redis, job.id)) >= 3, 15, "the first deltas")
    cancelled_at = time.monotonic()
    redis.set(streams.cancel_key(job.id), "1", ex=60)
    redis.publish(streams.CANCEL_CHANNEL, job.id)
    eventually(lambda: any(e.terminal for e in events(redis, job.id)), 10, "the end")
    assert time.monotonic() - cancelled_at < 1.0  # 400 words at 50 ms would take 20 s
    broker.join("chat", timeout=JOIN_MS)
    worker.join()

    evs = events(redis, job.id)
    assert terminal(evs).data["code"] == "cancelled"
    row = log_row(db, job.id)
    assert row is not None and row["status"] == "error"
    assert row["metadata"]["cancelled"] is True
    assert row["completion"] == streamed_text(evs)
    assert 0 < len(row["completion"]) < len(reply_text("long", 400))
    [usage] = usage_rows(db, job.id)
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
        [sys.executable, "-m", "cli", "worker", "--processes", "1", "--queues", "chat"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
    )
    try:
        enqueue_chat(broker, job)
        try:
            eventually(lambda: len(events(redis, job.id)) >= 5, 30, "the first deltas")
        except AssertionError:
            raise AssertionError((tmp_path / "worker.log").read_text()[-3000:]) from None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log_file.close()
    streamed_before_crash = streamed_text(events(redis, job.id))
    assert 0 < len(streamed_before_crash) < len(expected)
    row = log_row(db, job.id)
    assert row is not None and row["completion"] is None  # in flight when it died

    # A new worker takes the message once the dead one's heartbeat has expired.
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        eventually(lambda: any(e.terminal for e in events(redis, job.id)), 60, "the rerun")
    finally:
        worker.stop()

    evs = events(redis, job.id)
    assert streamed_text(evs) == expected  # no gap, no repeat
    assert terminal(evs).event == "done"
    row = log_row(db, job.id)
    assert row is not None and row["status"] == "ok" and row["completion"] == expected
    assert row["metadata"]["attempt"] == 2
    assert len(usage_rows(db, job.id)) == 1


def test_a_worker_ahead_of_the_schema_retries_instead_of_dropping_jobs(
    db: psycopg.Connection[Row],
) -> None:
    # What a worker deployed before `aiwrap migrate` gets from Postgres.
    with pytest.raises(psycopg.errors.UndefinedFunction) as missing:
        db.execute("SELECT * FROM aiwrap_begin_chat_from_a_later_release()")
    assert chat_actor.should_retry(0, missing.value)
    assert not chat_actor.should_retry(chat_actor.MAX_RUN_RETRIES, missing.value)
    assert should_retry(100, missing.value)
