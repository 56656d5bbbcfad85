"""Operating `aiwrap worker`: SIGTERM drains, SIGKILL is recovered in bounded time."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from core.jobs import new_job
from core.settings import Settings
from devstack.replies import reply_text
from workers.chat.actor import enqueue_chat
from workers.consumer import HEARTBEAT_TIMEOUT_MS, WakingRedisBroker

from .support import aiwrap_worker, behind_model, eventually, worker_processes

#: A dead worker's messages go back once its heartbeat is this stale and the
#: next maintenance run (every MAINTENANCE_INTERVAL_S per queue) has happened.
REDELIVERY_BOUND_S = HEARTBEAT_TIMEOUT_MS / 1000 + WakingRedisBroker.MAINTENANCE_INTERVAL_S


@pytest.fixture
def settings(settings: Settings, model_url: str) -> Settings:
    return behind_model(settings, model_url)


def start_workers(settings: Settings, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return aiwrap_worker(
        settings,
        "--queues",
        "chat",
        "--metrics-port",
        "0",
        *extra,
        log=log,
        AIWRAP_LOG_LEVEL="INFO",
    )


def exchange(db: psycopg.Connection[Any], job_id: str) -> dict[str, Any] | None:
    row: dict[str, Any] | None = db.execute(
        "SELECT status, completion FROM prompt_logs WHERE id = %s", [job_id]
    ).fetchone()
    return row


def usage_rows(db: psycopg.Connection[Any], job_id: str) -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM token_usage WHERE prompt_log_id = %s", [job_id]
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_sigterm_lets_an_in_flight_chat_finish_before_the_worker_exits(
    settings: Settings,
    broker: WakingRedisBroker,
    db: psycopg.Connection[Any],
    user_id: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    supervisor = start_workers(settings, log, "--processes", "1", "--grace", "30")
    try:
        job = new_job(
            user_id,
            [{"role": "user", "content": "drain [[delay_ms=50 words=40]]"}],
            model="gpt-4o-mini",
        )
        enqueue_chat(broker, job)
        assert eventually(lambda: exchange(db, job.id) is not None, 30), log.read_text()
        assert exchange(db, job.id)["completion"] is None  # type: ignore[index]
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)
    row = exchange(db, job.id)
    assert row is not None
    assert row["status"] == "ok", log.read_text()[-3000:]
    assert row["completion"] == reply_text("drain", 40)
    assert usage_rows(db, job.id) == 1


def test_a_sigkilled_worker_process_is_replaced_and_its_chat_redelivered_in_bounded_time(
    settings: Settings,
    broker: WakingRedisBroker,
    db: psycopg.Connection[Any],
    user_id: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    supervisor = start_workers(settings, log, "--processes", "1")
    try:
        job = new_job(
            user_id,
            [{"role": "user", "content": "kill [[delay_ms=50 words=60]]"}],
            model="gpt-4o-mini",
        )
        enqueue_chat(broker, job)
        assert eventually(lambda: exchange(db, job.id) is not None, 30), log.read_text()
        [victim] = sorted(worker_processes(supervisor.pid))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()

        def finished() -> bool:
            row = exchange(db, job.id)
            return row is not None and row["completion"] is not None

        # Restart, heartbeat expiry, maintenance, then the rerun itself (~3 s of deltas).
        assert eventually(finished, REDELIVERY_BOUND_S + 20), log.read_text()[-3000:]
        assert time.monotonic() - killed_at < REDELIVERY_BOUND_S + 20
        assert victim not in worker_processes(supervisor.pid)
    finally:
        supervisor.terminate()
        supervisor.wait(60)
    row = exchange(db, job.id)
    assert row is not None and row["status"] == "ok"
    assert row["completion"] == reply_text("kill", 60)
    assert usage_rows(db, job.id) == 1
