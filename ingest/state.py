"""What the ingest process holds open: its Redis client, Enqueuer and database pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from core.db import make_pool
from core.settings import Settings

from .enqueue import Enqueuer


@dataclass
class IngestState:
    """Per-process resources of the ingest app, built in its lifespan."""

    settings: Settings
    redis: aioredis.Redis
    pool: AsyncConnectionPool[Any]
    enqueuer: Enqueuer

    @classmethod
    def build(cls, settings: Settings) -> IngestState:
        redis = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2, socket_timeout=10
        )
        return cls(
            settings=settings,
            redis=redis,
            # Ingest reads one statement at a time; its one write (a profile) is a
            # transaction of its own (core/users.py).
            pool=make_pool(settings.database_url, name="ingest", autocommit=True),
            enqueuer=Enqueuer(redis),
        )

    @staticmethod
    def of(request: Request) -> IngestState:
        state: IngestState = request.app.state.aiwrap
        return state

    async def open(self) -> None:
        # Not waiting: ingest answers webhooks without Postgres, so it must
        # start (and report itself unready) while the database is away.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()

    async def ping_redis(self) -> None:
        await self.redis.ping()

    async def ping_postgres(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")
