"""Clerk events through the real broker and worker: applied, dead-lettered with a reason,
retried through outages, and old deliveries pruned."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import psycopg
import pytest

from core.logs import configure_logging
from core.queues import APPLY_CLERK_EVENT, IDENTITY_QUEUE
from core.settings import Settings
from workers.consumer import WakingRedisBroker
from workers.identity.apply import prune_deliveries

from .clerk_support import (
    T0,
    Version,
    new_user_id,
    svix_id,
    user_event,
    user_row,
)


def test_events_sent_to_the_actor_are_applied_by_the_worker(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[dict[str, Any]],
    user_id: str,
) -> None:
    actor = broker.get_actor(APPLY_CLERK_EVENT)
    latest = Version(user_id, T0 + 2, first_name="Grace")
    for v, kind in ((latest, "user.updated"), (Version(user_id, T0), "user.created")):
        actor.send(svix_id(), user_event(kind, v))
    broker.join(IDENTITY_QUEUE, timeout=10_000)
    worker.join()
    assert user_row(db, user_id) == latest.row()


def test_a_schema_invalid_event_is_dead_lettered_with_a_log_line_saying_why(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    user_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "INFO")
    actor = broker.get_actor(APPLY_CLERK_EVENT)
    bad = {"type": "user.updated", "data": {"id": user_id, "updated_at": "yesterday"}}
    message = actor.send(svix_id(), bad)
    broker.join(IDENTITY_QUEUE, timeout=10_000)
    worker.join()
    dead = broker.client.zrange(f"{broker.namespace}:{IDENTITY_QUEUE}.XQ", 0, -1)
    # The Redis broker keys messages by an id of its own.
    assert message.options["redis_message_id"].encode() in dead
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    assert any(
        line.get("event") == "clerk_event_dead_lettered"
        and line.get("logger") == "workers.identity.actor"
        and "updated_at" in line["reason"]
        for line in lines
    ), lines


def test_a_lost_database_connection_is_retried_until_the_event_applies(
    settings: Settings, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    from workers.broker import build_broker

    app_name = f"aiwrap_retry_{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in settings.database_url else "?"
    url = f"{settings.database_url}{separator}application_name={app_name}"
    broker = build_broker(Settings(database_url=url, redis_url=settings.redis_url))
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        # The worker's pooled connection dies under it, as in a Postgres restart.
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        killed: list[Any] = []
        while not killed and datetime.now(UTC) < deadline:
            killed = db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (app_name,),
            ).fetchall()
        assert killed, "the worker's connection never appeared"
        v = Version(user_id, T0)
        broker.get_actor(APPLY_CLERK_EVENT).send(svix_id(), user_event("user.created", v))
        broker.join(IDENTITY_QUEUE, timeout=20_000)
        worker.join()
        assert user_row(db, user_id) == v.row()
    finally:
        worker.stop()
        broker.close()


def test_events_queued_before_the_worker_starts_wait_for_its_pool_instead_of_failing(
    broker: WakingRedisBroker, db: psycopg.Connection[dict[str, Any]]
) -> None:
    versions = [Version(new_user_id(), T0) for _ in range(20)]
    actor = broker.get_actor(APPLY_CLERK_EVENT)
    for v in versions:
        actor.send(svix_id(), user_event("user.created", v))
    failures: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = failures.append  # type: ignore[method-assign]
    logging.getLogger("dramatiq").addHandler(handler)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        broker.join(IDENTITY_QUEUE, timeout=20_000)
        worker.join()
    finally:
        worker.stop()
        logging.getLogger("dramatiq").removeHandler(handler)
    assert all(user_row(db, v.user_id) == v.row() for v in versions)
    # Not one failed and was retried: each waited for the pool to open.
    assert [r.getMessage() for r in failures] == []


def test_deliveries_older_than_any_svix_retry_are_pruned(
    db: psycopg.Connection[Any], migrated: str, user_id: str
) -> None:
    old, recent = f"msg_old_{user_id}", f"msg_recent_{user_id}"
    db.execute(
        "INSERT INTO clerk_deliveries (svix_id, applied_at) VALUES"
        " (%s, now() - interval '4 days'), (%s, now() - interval '1 day')",
        [old, recent],
    )

    async def prune() -> int:
        async with await psycopg.AsyncConnection.connect(migrated) as conn:
            return await prune_deliveries(conn)

    assert asyncio.run(prune()) >= 1
    kept = {
        row["svix_id"]
        for row in db.execute(
            "SELECT svix_id FROM clerk_deliveries WHERE svix_id = ANY(%s)", [[old, recent]]
        )
    }
    assert kept == {recent}
