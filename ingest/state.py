"""What the ingest process holds open: its Redis clients, Enqueuer, database pool and
stream slots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from core.db import make_pool
from core.settings import Settings

from .enqueue import Enqueuer
from .slots import StreamSlots

#: Redis connections for requests' own reads, and as many again for queueing.
REQUEST_CONNECTIONS: Final = 100
#: Seconds a request waits for a free Redis connection before it is a 503.
CONNECTION_WAIT_S: Final = 5


@dataclass
class IngestState:
    """Per-process resources of the ingest app, built in its lifespan."""

    settings: Settings
    #: Reads and writes of a request's own: job records, cancels, readiness.
    redis: aioredis.Redis
    #: The streams' blocking reads, on a pool of their own (ingest/slots.py).
    stream_redis: aioredis.Redis
    pool: AsyncConnectionPool[Any]
    #: Queues webhooks and chats, on connections no stream can take.
    enqueuer: Enqueuer
    streams: StreamSlots

    @classmethod
    def build(cls, settings: Settings) -> IngestState:
        def client(connections: int) -> aioredis.Redis:
            # A burst past `connections` waits briefly for one rather than failing.
            return aioredis.Redis.from_pool(
                aioredis.BlockingConnectionPool.from_url(
                    settings.redis_url,
                    max_connections=connections,
                    timeout=CONNECTION_WAIT_S,
                    socket_connect_timeout=2,
                    socket_timeout=10,
                )
            )

        streams = StreamSlots(settings.max_streams, settings.user_max_streams)
        return cls(
            settings=settings,
            redis=client(REQUEST_CONNECTIONS),
            # One connection per open stream at most: the cap bounds it.
            stream_redis=client(settings.max_streams),
            # Ingest reads one statement at a time; its one write (a profile) is a
            # transaction of its own (core/users.py).
            pool=make_pool(settings.database_url, name="ingest", autocommit=True),
            enqueuer=Enqueuer(client(REQUEST_CONNECTIONS)),
            streams=streams,
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
        for redis in (self.redis, self.stream_redis, self.enqueuer.redis):
            await redis.aclose()

    async def ping_redis(self) -> None:
        await self.redis.ping()

    async def ping_postgres(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")
