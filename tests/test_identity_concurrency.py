"""The same histories as the property test, delivered concurrently.

Once by many threads applying straight to Postgres, once by many threads
sending to the real Redis broker with two real worker processes (`aiwrap
worker --processes 2`) consuming. Either way the table must equal the model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from core.queues import APPLY_CLERK_EVENT, IDENTITY_QUEUE, NAMESPACE
from core.settings import Settings
from workers.broker import build_broker
from workers.consumer import WakingRedisBroker

from .clerk_support import (
    BUDGET,
    T0,
    History,
    Version,
    apply_all,
    assert_converged,
    shuffled_deliveries,
    svix_id,
    user_event,
    user_row,
)
from .support import eventually, with_settings

THREADS = 16
WORKER_APP_NAME = f"aiwrap_identity_workers_{os.getpid()}"


def with_application_name(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={WORKER_APP_NAME}"


Deliveries = list[tuple[str, dict[str, Any]]]


def in_threads(deliveries: Deliveries, send: Any) -> None:
    """Deal the deliveries out to THREADS threads, which all start at once."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(share: Deliveries) -> None:
        try:
            barrier.wait(10)
            send(share)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(deliveries[i::THREADS],)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


@pytest.fixture(scope="module")
def worker_settings(settings: Settings) -> Settings:
    return with_settings(settings, default_monthly_token_budget=BUDGET)


@pytest.fixture(scope="module")
def module_broker(worker_settings: Settings) -> Iterator[WakingRedisBroker]:
    broker = build_broker(worker_settings)
    broker.flush(IDENTITY_QUEUE)
    yield broker
    broker.close()


@pytest.fixture(scope="module")
def worker_processes(
    worker_settings: Settings, module_broker: WakingRedisBroker
) -> Iterator[subprocess.Popen[bytes]]:
    """`aiwrap worker --processes 2` on the identity queue, as a real subprocess."""
    env = {
        **os.environ,
        "DATABASE_URL": with_application_name(worker_settings.database_url),
        "REDIS_URL": worker_settings.redis_url,
        "AIWRAP_DEFAULT_MONTHLY_TOKEN_BUDGET": str(BUDGET),
        "AIWRAP_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "worker",
            "--processes",
            "2",
            "--queues",
            IDENTITY_QUEUE,
            "--grace",
            "5",
        ],
        env=env,
    )
    try:
        heartbeats = f"{NAMESPACE}:__heartbeats__"

        def two_checked_in() -> bool:
            assert process.poll() is None, "aiwrap worker exited while starting"
            return bool(module_broker.client.zcard(heartbeats) >= 2)

        eventually(two_checked_in, 30, "two worker processes to check in")
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@hsettings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(shuffled_deliveries())
def test_histories_applied_by_many_threads_at_once_converge(
    migrated: str,
    conn: psycopg.Connection[dict[str, Any]],
    case: tuple[list[History], Deliveries],
) -> None:
    users, deliveries = case
    in_threads(deliveries, lambda share: asyncio.run(apply_all(migrated, share, BUDGET)))
    assert_converged(conn, users)


@hsettings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(shuffled_deliveries())
def test_histories_sent_by_many_threads_to_two_worker_processes_converge(
    module_broker: WakingRedisBroker,
    worker_processes: subprocess.Popen[bytes],
    conn: psycopg.Connection[dict[str, Any]],
    case: tuple[list[History], Deliveries],
) -> None:
    users, deliveries = case
    actor = module_broker.get_actor(APPLY_CLERK_EVENT)

    def send(share: Deliveries) -> None:
        for delivery_id, event in share:
            actor.send(delivery_id, event)

    in_threads(deliveries, send)
    module_broker.join(IDENTITY_QUEUE, timeout=30_000)
    assert worker_processes.poll() is None
    assert_converged(conn, users)


def test_two_worker_processes_consume_the_identity_queue_side_by_side(
    module_broker: WakingRedisBroker,
    worker_processes: subprocess.Popen[bytes],
    conn: psycopg.Connection[dict[str, Any]],
) -> None:
    versions = [Version(f"user_par_{i}_{svix_id()[4:16]}", T0 + i) for i in range(200)]
    actor = module_broker.get_actor(APPLY_CLERK_EVENT)
    in_threads(
        [(svix_id(), user_event("user.created", v)) for v in versions],
        lambda share: [actor.send(*d) for d in share],
    )
    module_broker.join(IDENTITY_QUEUE, timeout=30_000)
    assert all(user_row(conn, v.user_id) == v.row() for v in versions)
    # Each worker process holds its own pooled connection, named by the URL.
    backends = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s",
        (WORKER_APP_NAME,),
    ).fetchone()
    assert backends == {"n": 2}
    assert module_broker.client.zcard(f"{NAMESPACE}:__heartbeats__") >= 2
