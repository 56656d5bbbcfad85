"""schema.sql is the seed's contract, and `aiwrap migrate` applies it idempotently."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

COLUMNS = """
SELECT table_name, column_name, data_type, is_nullable, column_default
  FROM information_schema.columns WHERE table_schema = 'public'
"""


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """An empty database of this test's own on the test server."""
    name = f"aiwrap_migrate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(database_url, dbname=name)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def migrate(database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`aiwrap migrate` as a migration job runs it: with DATABASE_URL and nothing else."""
    unrelated = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "cli", "migrate"],
        env={**unrelated, "DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def columns(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], tuple[str, str, str | None]]:
    return {(t, c): (ty, nul, default) for t, c, ty, nul, default in conn.execute(COLUMNS)}


def test_migrate_creates_the_schema_then_is_a_no_op_the_second_time(fresh_database: str) -> None:
    first = migrate(fresh_database)
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    assert "+ table user_profiles" in first.stdout
    assert "+ function aiwrap_over_budget(" in first.stdout  # a function file of its own
    assert "+ view aiwrap_exchanges" in first.stdout
    with psycopg.connect(fresh_database) as conn:
        before = columns(conn)

    second = migrate(fresh_database)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "Schema is up to date: nothing to do."
    with psycopg.connect(fresh_database) as conn:
        assert columns(conn) == before


def test_migrate_without_a_database_url_names_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "DATABASE_URL is missing" in result.stderr


def test_the_seed_tables_have_its_columns_types_and_defaults(migrated: str) -> None:
    with psycopg.connect(migrated) as conn:
        cols = columns(conn)
    expected = {
        ("user", "id"): ("text", "NO", None),
        ("user", "email"): ("text", "YES", None),
        ("user", "first_name"): ("text", "YES", None),
        ("user", "last_name"): ("text", "YES", None),
        ("user", "image_url"): ("text", "YES", None),
        ("user", "updated_at"): ("timestamp with time zone", "YES", None),
        ("user", "created_at"): ("timestamp with time zone", "NO", "now()"),
        ("user_profiles", "id"): ("uuid", "NO", "gen_random_uuid()"),
        ("user_profiles", "user_id"): ("text", "NO", None),
        ("user_profiles", "display_name"): ("text", "YES", None),
        ("user_profiles", "default_model"): ("text", "NO", "'gpt-4o-mini'::text"),
        ("user_profiles", "monthly_token_budget"): ("bigint", "NO", "0"),
        ("user_profiles", "created_at"): ("timestamp with time zone", "NO", "now()"),
        ("token_usage", "id"): ("uuid", "NO", "gen_random_uuid()"),
        ("token_usage", "user_id"): ("text", "NO", None),
        ("token_usage", "model"): ("text", "NO", None),
        ("token_usage", "prompt_tokens"): ("integer", "NO", "0"),
        ("token_usage", "completion_tokens"): ("integer", "NO", "0"),
        ("token_usage", "cost_microcents"): ("bigint", "NO", "0"),
        ("token_usage", "created_at"): ("timestamp with time zone", "NO", "now()"),
        ("prompt_logs", "id"): ("uuid", "NO", "gen_random_uuid()"),
        ("prompt_logs", "user_id"): ("text", "NO", None),
        ("prompt_logs", "model"): ("text", "NO", None),
        ("prompt_logs", "prompt"): ("text", "NO", None),
        ("prompt_logs", "completion"): ("text", "YES", None),
        ("prompt_logs", "prompt_tokens"): ("integer", "NO", "0"),
        ("prompt_logs", "completion_tokens"): ("integer", "NO", "0"),
        ("prompt_logs", "latency_ms"): ("integer", "YES", None),
        ("prompt_logs", "status"): ("text", "NO", "'ok'::text"),
        ("prompt_logs", "metadata"): ("jsonb", "YES", None),
        ("prompt_logs", "created_at"): ("timestamp with time zone", "NO", "now()"),
    }
    for key, spec in expected.items():
        assert cols.get(key) == spec, key


def test_the_seed_indexes_constraints_and_cascades_exist(migrated: str) -> None:
    with psycopg.connect(migrated) as conn:
        indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            ).fetchall()
        )
        checks = dict(
            conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'c'"
            ).fetchall()
        )
        cascades = {
            row[0]
            for row in conn.execute(
                "SELECT conrelid::regclass::text FROM pg_constraint"
                " WHERE contype = 'f' AND confdeltype = 'c' AND confrelid = '\"user\"'::regclass"
            )
        }
    assert "(default_model)" in indexes["idx_profile_model"]
    assert "(user_id, created_at)" in indexes["idx_usage_user_time"]
    assert "(model)" in indexes["idx_usage_model"]
    assert "(user_id, created_at)" in indexes["idx_log_user_time"]
    assert "UNIQUE" in indexes["user_profiles_user_id_unique"]
    assert "'ok'" in checks["prompt_logs_status_check"]
    assert "'filtered'" in checks["prompt_logs_status_check"]
    assert cascades >= {"user_profiles", "token_usage", "prompt_logs"}


def test_the_status_check_refuses_an_unknown_status(
    db: psycopg.Connection[Any], user_id: str
) -> None:
    db.execute('INSERT INTO "user" (id) VALUES (%s)', [user_id])
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "INSERT INTO prompt_logs (user_id, model, prompt, status) VALUES (%s, 'm', 'p', 'meh')",
            [user_id],
        )
