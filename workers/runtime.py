"""What one worker process holds open: its database pool and its Redis client.

Built unopened when the broker is built (so importing costs nothing and forked
processes never inherit a socket), opened on the worker's event loop after the
process boots, closed before it exits.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from .db import make_pool
from .settings import Settings


class Runtime:
    """The per-process resources that actors use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: AsyncConnectionPool[Any] | None = None
        self._redis: aioredis.Redis | None = None

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise RuntimeError("The worker runtime is not open: no database pool yet.")
        return self._pool

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("The worker runtime is not open: no Redis client yet.")
        return self._redis

    async def open(self) -> None:
        """Open the pool (waiting for its connection) and the Redis client."""
        self._pool = make_pool(self.settings.database_url, name="worker")
        await self._pool.open(wait=True)
        self._redis = aioredis.Redis.from_url(self.settings.redis_url)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
