"""What one worker process holds open: its database pool, Redis and model clients.

Built unopened when the broker is built (so importing costs nothing and forked
processes never inherit a socket), opened on the worker's event loop as the
worker boots, before its threads take any message, and closed after they
have finished.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from openai import AsyncOpenAI, Timeout
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from core.db import POOL_TIMEOUT, make_pool
from core.logs import get_logger
from core.metering import Price, load_prices
from core.settings import Settings

from .cancels import CancelListener
from .chat import upstream

#: Seconds to connect to the model, and to wait for each next piece of its reply.
OPENAI_CONNECT_TIMEOUT_S = 5.0
OPENAI_READ_TIMEOUT_S = 60.0
#: Where the model client goes when OPENAI_BASE_URL is empty. Passed explicitly: given
#: None, the SDK would read OPENAI_BASE_URL itself, and an empty one (an env file's
#: `OPENAI_BASE_URL=`) would make every call fail to connect.
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Redis connections one worker process opens at most.
REDIS_MAX_CONNECTIONS = 200

log = get_logger(__name__)


def model_client(settings: Settings) -> AsyncOpenAI:
    """The model client: it never retries on its own (the chat actor does), and an empty
    OPENAI_BASE_URL means OpenAI's, as the settings table says."""
    return AsyncOpenAI(
        api_key=settings.openai_api_key or "unset",
        base_url=settings.openai_base_url or OPENAI_DEFAULT_BASE_URL,
        max_retries=0,
        timeout=Timeout(OPENAI_READ_TIMEOUT_S, connect=OPENAI_CONNECT_TIMEOUT_S),
        http_client=upstream.http_client(),
    )


class Runtime:
    """The per-process resources that actors use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: AsyncConnectionPool[Any] | None = None
        self._redis: aioredis.Redis | None = None
        self._openai: AsyncOpenAI | None = None
        self._prices: dict[str, Price] | None = None
        #: Chat cancellations, heard on one Pub/Sub subscription for the process.
        self.cancels = CancelListener()

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

    @property
    def openai(self) -> AsyncOpenAI:
        """The model client; it never retries on its own, the chat actor does."""
        if self._openai is None:
            raise RuntimeError("The worker runtime is not open: no model client yet.")
        return self._openai

    @property
    def prices(self) -> dict[str, Price]:
        """The price table, loaded once: built-in prices overridden by AIWRAP_PRICES."""
        if self._prices is None:
            self._prices = load_prices(self.settings.prices_path)
        return self._prices

    async def open(self) -> None:
        """Open the pool (waiting a while for its connection), the Redis and model clients."""
        _ = self.prices  # a bad price file stops the worker at boot, not mid-chat
        # Hundreds of chats publish at once: wait for a free connection rather
        # than fail with "Too many connections" (the default pool's answer at 100).
        # from_pool: the client owns the pool, so aclose() closes its connections.
        self._redis = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                self.settings.redis_url, max_connections=REDIS_MAX_CONNECTIONS, timeout=10
            )
        )
        self.cancels.start(self._redis)
        self._openai = model_client(self.settings)
        pool = make_pool(self.settings.database_url, name="worker")
        await pool.open(wait=False)
        self._pool = pool
        try:
            await pool.wait(timeout=POOL_TIMEOUT)
        except PoolTimeout:
            # Start anyway: the pool keeps connecting in the background, and a
            # message that needs it meanwhile fails as transient and is retried.
            log.warning("database_unreachable_at_start", retrying_in_background=True)

    async def close(self) -> None:
        # After in-flight chats have finished: they can be cancelled while draining.
        await self.cancels.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._openai is not None:
            await self._openai.close()
            self._openai = None
