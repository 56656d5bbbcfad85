"""Whatever the model or the caller sends, an accepted chat ends final and metered: text
Postgres cannot store is kept with its unstorable characters marked, and a row Postgres
refuses for good is finished as an error with what is known."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dramatiq
import psycopg
import pytest
import redis as redis_lib

from core.settings import Settings
from core.storable import storable, storable_json
from devstack.replies import reply_text
from workers.consumer import WakingRedisBroker

from .chat_worker_support import Row, chat, events, log_row, streamed_text, terminal, usage_rows
from .support import behind_model


@pytest.fixture
def settings(settings: Settings, model_url: str) -> Settings:
    """The shared settings, with the local model server behind the worker."""
    return behind_model(settings, model_url)


def test_nul_from_the_caller_and_the_model_is_stored_marked_and_the_chat_is_metered(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
) -> None:
    prompt = "visible \u0000 text"  # the model server echoes it: NUL in its output too
    job_id = chat(broker, worker, user_id, prompt)

    row = log_row(db, job_id)
    assert row is not None and row["status"] == "ok"
    assert row["prompt"] == "visible \ufffd text"
    assert row["completion"] == reply_text(prompt).replace("\u0000", "\ufffd")
    assert row["metadata"]["unstorable_replaced"] == {"prompt": 1, "completion": 1}
    [usage] = usage_rows(db, job_id)
    assert usage["completion_tokens"] == row["completion_tokens"] > 0
    # Readers saw exactly what the model sent, NUL included.
    evs = events(redis, job_id)
    assert streamed_text(evs) == reply_text(prompt)
    assert terminal(evs).event == "done"
    # And the next chat is measured against a budget that counts this one.
    used = db.execute(
        "SELECT sum(prompt_tokens + completion_tokens) AS n FROM token_usage WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    assert used is not None and used["n"] == row["prompt_tokens"] + row["completion_tokens"]


def test_queue_ms_is_the_wait_before_the_run_not_the_whole_exchange(
    broker: WakingRedisBroker, worker: dramatiq.Worker, db: psycopg.Connection[Row], user_id: str
) -> None:
    queued_at = datetime.now(UTC) - timedelta(seconds=3)
    # About a second of streaming, so that the wait and the whole exchange differ.
    job_id = chat(broker, worker, user_id, "hello [[delay_ms=80]]", now=queued_at)
    row = log_row(db, job_id)
    assert row is not None
    assert row["latency_ms"] > 800
    assert 3_000 <= row["metadata"]["queue_ms"] < 3_000 + row["latency_ms"] / 2


@pytest.fixture
def refusing_completions(migrated: str) -> Iterator[None]:
    """A trigger that makes Postgres refuse, for good, a completion holding `refuse-me`."""
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute(
            """
            CREATE OR REPLACE FUNCTION test_refuse_completion() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.completion LIKE '%refuse-me%' THEN
                    RAISE EXCEPTION 'this completion cannot be stored';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse_completion BEFORE UPDATE ON prompt_logs
                FOR EACH ROW EXECUTE FUNCTION test_refuse_completion();
            """
        )
    yield None
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("DROP TRIGGER test_refuse_completion ON prompt_logs")
        conn.execute("DROP FUNCTION test_refuse_completion()")


def test_a_row_postgres_refuses_for_good_is_finished_as_an_error_and_still_metered(
    refusing_completions: None,
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[Row],
    redis: redis_lib.Redis,
    user_id: str,
) -> None:
    job_id = chat(broker, worker, user_id, "refuse-me please")
    row = log_row(db, job_id)
    assert row is not None
    assert row["status"] == "error" and row["completion"] == ""
    assert row["metadata"]["error"]["code"] == "internal_error"
    assert row["metadata"]["finish_refused"] == "RaiseException"
    assert row["metadata"]["completion_chars"] == len(reply_text("refuse-me please"))
    [usage] = usage_rows(db, job_id)
    assert usage["completion_tokens"] > 0  # the provider bills it: so is it metered
    end = terminal(events(redis, job_id))
    assert end.event == "error" and end.data["code"] == "internal_error"


def test_storable_text_marks_nul_and_lone_surrogates_and_leaves_the_rest() -> None:
    assert storable("plain ünïcode 👋") == ("plain ünïcode 👋", 0)
    assert storable("a\u0000b\ud800c") == ("a\ufffdb\ufffdc", 2)
    assert storable_json({"k\u0000": ["x\u0000", 1, None, {"y": "\udfff"}]}) == {
        "k\ufffd": ["x\ufffd", 1, None, {"y": "\ufffd"}]
    }
