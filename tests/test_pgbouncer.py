"""aiwrap through a real PgBouncer in transaction mode, and why its settings are what they are.

Each PgBouncer here has 2 server connections shared by every client, as
Neon's pooled endpoint shares a few among many processes. Tests that leave
state on server connections (prepared statements, session locks) get a
PgBouncer of their own, stopped at the end, so they cannot spoil others.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from core.db import CONNECTION_KWARGS, make_pool
from core.faults import is_transient

# The session fixtures too, until conftest imports them for the whole suite.
from .pgbouncer import PgBouncer, PgBouncerNotInstalled
from .support import eventually

ROOT = Path(__file__).resolve().parent.parent

CLIENTS = 4
TRANSACTIONS_PER_CLIENT = 200
WORKLOAD_DEADLINE = 90.0

# One metered chat turn, as the workers write it: upsert the user, meter the
# call, read the month's total. pg_backend_pid() says which server connection ran it.
UPSERT_USER = """
INSERT INTO "user" (id, email, updated_at) VALUES (%(user_id)s, %(email)s, now())
ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, updated_at = EXCLUDED.updated_at
"""
RECORD_USAGE = """
INSERT INTO token_usage (user_id, model, prompt_tokens, completion_tokens, cost_microcents)
VALUES (%(user_id)s, %(model)s, %(prompt_tokens)s, %(completion_tokens)s, %(cost)s)
"""
MONTH_USAGE = """
SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) AS tokens, pg_backend_pid() AS pid
  FROM token_usage
 WHERE user_id = %(user_id)s AND created_at >= date_trunc('month', now())
"""

XACT_LOCK = "SELECT pg_advisory_xact_lock(%(key)s)"
SESSION_LOCK = "SELECT pg_advisory_lock(%(key)s)"
TRY_SESSION_LOCK = "SELECT pg_try_advisory_lock(%(key)s) AS got"
UNLOCK = "SELECT pg_advisory_unlock(%(key)s)"
LOCK_WAITERS = """
SELECT count(*) AS waiting FROM pg_locks
 WHERE locktype = 'advisory' AND NOT granted
   AND classid = 0 AND objid::bigint = %(key)s AND objsubid = 1
"""


@dataclass
class ClientRun:
    """What one client of the workload saw."""

    transactions: int = 0
    server_pids: set[int] = field(default_factory=set)
    error: psycopg.Error | None = None


PoolFactory = Callable[[str], AsyncConnectionPool[Any]]


async def metered_turns(pool: AsyncConnectionPool[Any], run: ClientRun) -> None:
    user_id = f"user_{uuid.uuid4().hex[:24]}"
    deadline = time.monotonic() + WORKLOAD_DEADLINE
    await pool.open(wait=True)
    try:
        for turn in range(TRANSACTIONS_PER_CLIENT):
            if time.monotonic() > deadline:
                raise AssertionError(f"workload did not finish in {WORKLOAD_DEADLINE} s")
            params = {
                "user_id": user_id,
                "email": f"{turn}@example.com",
                "model": "gpt-4o-mini",
                "prompt_tokens": 10,
                "completion_tokens": turn,
                "cost": 7 * turn,
            }
            async with pool.connection() as conn, conn.transaction():
                await conn.execute(UPSERT_USER, params)
                await conn.execute(RECORD_USAGE, params)
                cursor = await conn.execute(MONTH_USAGE, params)
                row = await cursor.fetchone()
            assert row is not None
            run.server_pids.add(row["pid"])
            run.transactions += 1
    except psycopg.Error as error:
        run.error = error
    finally:
        await pool.close()


def run_workload(url: str, pool_factory: PoolFactory) -> list[ClientRun]:
    """CLIENTS threads, each with its own pool (as separate processes have), all at once."""
    runs = [ClientRun() for _ in range(CLIENTS)]

    def client(run: ClientRun) -> None:
        asyncio.run(metered_turns(pool_factory(url), run))

    with ThreadPoolExecutor(CLIENTS) as executor:
        futures = [executor.submit(client, run) for run in runs]
        for future in futures:
            future.result(timeout=WORKLOAD_DEADLINE + 30)
    return runs


def pool_with_psycopg_defaults(url: str, **kwargs: Any) -> AsyncConnectionPool[Any]:
    """aiwrap's pool shape, but prepared statements left as psycopg ships them."""
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=1,
        open=False,
        timeout=10,
        kwargs={"row_factory": dict_row, **kwargs},
    )


@pytest.fixture
def private_pgbouncer(migrated: str) -> Iterator[PgBouncer]:
    """A PgBouncer of this test's own (same settings), to pollute, stop and start."""
    with PgBouncer(migrated) as bouncer:
        yield bouncer


def lock_key() -> int:
    # Below 2**31, so pg_locks shows it as classid 0, objid key.
    return secrets.randbelow(2**31 - 1) + 1


def test_aiwraps_pools_share_two_server_connections_through_transaction_mode(
    pgbouncer_url: str,
) -> None:
    runs = run_workload(pgbouncer_url, make_pool)

    assert [run.error for run in runs] == [None] * CLIENTS
    assert [run.transactions for run in runs] == [TRANSACTIONS_PER_CLIENT] * CLIENTS
    all_pids = set().union(*(run.server_pids for run in runs))
    assert len(all_pids) <= 2, "4 clients must have shared PgBouncer's 2 server connections"
    # Consecutive transactions of one client ran on different server
    # connections: exactly what breaks prepared statements below.
    assert any(len(run.server_pids) > 1 for run in runs)


@pytest.mark.parametrize(
    "prepare", [{}, {"prepare_threshold": 0}], ids=["psycopg-default-5", "prepare-at-once"]
)
def test_the_same_workload_with_prepared_statements_fails_through_pgbouncer(
    private_pgbouncer: PgBouncer, prepare: dict[str, Any]
) -> None:
    runs = run_workload(
        private_pgbouncer.url, lambda url: pool_with_psycopg_defaults(url, **prepare)
    )

    failures = [run.error for run in runs if run.error is not None]
    assert failures, "prepared statements survived transaction pooling; this test is wrong"
    for error in failures:
        # _pg3_N prepared on one server connection is missing on the next one
        # (or another client's _pg3_N is already there).
        assert isinstance(error, errors.InvalidSqlStatementName | errors.DuplicatePreparedStatement)
        assert "_pg3_" in str(error)


def test_a_transaction_advisory_lock_serializes_two_clients_through_pgbouncer(
    private_pgbouncer: PgBouncer, migrated: str
) -> None:
    key = {"key": lock_key()}
    acquired_at: list[float] = []

    def client_b() -> None:
        with psycopg.connect(private_pgbouncer.url, **CONNECTION_KWARGS) as conn:
            conn.execute(XACT_LOCK, key)
            acquired_at.append(time.monotonic())

    with (
        psycopg.connect(migrated, autocommit=True, row_factory=dict_row) as direct,
        psycopg.connect(private_pgbouncer.url, **CONNECTION_KWARGS) as client_a,
    ):
        client_a.execute(XACT_LOCK, key)
        b = threading.Thread(target=client_b, daemon=True)
        b.start()
        eventually(
            lambda: direct.execute(LOCK_WAITERS, key).fetchone()["waiting"] == 1,
            10,
            "client B to queue on the lock client A holds",
        )
        assert b.is_alive() and not acquired_at
        committed_at = time.monotonic()
        client_a.commit()
        b.join(10)

    assert not b.is_alive()
    assert acquired_at and acquired_at[0] >= committed_at


def test_a_session_advisory_lock_does_not_hold_through_pgbouncer(
    private_pgbouncer: PgBouncer, migrated: str
) -> None:
    key = {"key": lock_key()}
    session = {**CONNECTION_KWARGS, "autocommit": True, "row_factory": dict_row}
    with (
        psycopg.connect(private_pgbouncer.url, **session) as client_a,
        psycopg.connect(private_pgbouncer.url, **session) as client_b,
    ):
        client_a.execute(SESSION_LOCK, key)
        # The lock belongs to the server connection, which PgBouncer handed to
        # client B for its next transaction: B "acquires" what A holds.
        assert client_b.execute(TRY_SESSION_LOCK, key).fetchone()["got"] is True

    with psycopg.connect(migrated, autocommit=True, row_factory=dict_row) as direct:
        # Both clients are gone, and the lock is still held, by an idle pooled connection.
        assert direct.execute(TRY_SESSION_LOCK, key).fetchone()["got"] is False
        private_pgbouncer.stop()  # only closing the server connections frees it
        eventually(
            lambda: direct.execute(TRY_SESSION_LOCK, key).fetchone()["got"],
            10,
            "the leaked lock to go with PgBouncer's server connections",
        )
        direct.execute(UNLOCK, key)


def run_migrate(database_url: str, redis_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "migrate"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_aiwrap_migrate_works_through_pgbouncer_even_twice_at_once(
    pgbouncer: PgBouncer,
    migrated: str,
    redis_url: str,
) -> None:
    dbname = f"aiwrap_pgb_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(migrated, autocommit=True) as direct:
        direct.execute(f'CREATE DATABASE "{dbname}"')
    try:
        url = pgbouncer.url_for(dbname)
        migrations = [run_migrate(url, redis_url) for _ in range(2)]
        outputs = [process.communicate(timeout=60)[0] for process in migrations]
        assert [process.returncode for process in migrations] == [0, 0], outputs
        # The transaction-scoped migration lock made one wait for the other.
        assert sorted(out.splitlines()[0].split(":")[0] for out in outputs) == [
            "Applied schema.sql",
            "Schema is up to date",
        ], outputs

        again = run_migrate(url, redis_url)
        assert again.communicate(timeout=60)[0].strip() == "Schema is up to date: nothing to do."
        assert again.returncode == 0
    finally:
        with psycopg.connect(migrated, autocommit=True) as direct:
            direct.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def test_aiwraps_pool_recovers_from_a_pgbouncer_restart(private_pgbouncer: PgBouncer) -> None:
    async def scenario() -> None:
        pool = make_pool(private_pgbouncer.url)
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

            private_pgbouncer.stop()
            with pytest.raises(psycopg.Error) as lost:
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
            assert is_transient(lost.value)

            private_pgbouncer.start()
            async with pool.connection() as conn:
                cursor = await conn.execute("SELECT 1 AS one")
                assert await cursor.fetchone() == {"one": 1}
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_missing_pgbouncer_says_that_ci_installs_it(tmp_path: Path, migrated: str) -> None:
    bouncer = PgBouncer(migrated, search_path=str(tmp_path))
    with pytest.raises(PgBouncerNotInstalled, match=r"\.ci/run installs it"):
        bouncer.start()
