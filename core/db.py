"""The one place Postgres connections are made.

Each process gets one pool of at most one connection: the shared pool lives in
PgBouncer (Neon's pooled endpoint runs it in transaction mode), not here. So
prepared statements are off, nothing session-scoped is ever used, and no
connection or transaction is held across I/O to Redis or the model.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

#: Seconds a pool waits for its one connection before giving up (PoolTimeout).
POOL_TIMEOUT = 10.0
#: Seconds libpq waits for a TCP connection; its default is far too patient.
CONNECT_TIMEOUT = 10
#: Seconds an unused connection is kept; PgBouncer and serverless Postgres reclaim idle ones.
MAX_IDLE = 20.0

#: Keyword arguments for every connection aiwrap opens, pooled or not.
CONNECTION_KWARGS: dict[str, Any] = {
    # PgBouncer in transaction mode hands each transaction a different server
    # connection, so a statement prepared on one is missing on the next.
    "prepare_threshold": None,
    "connect_timeout": CONNECT_TIMEOUT,
}


def make_pool(
    url: str, *, name: str = "aiwrap", autocommit: bool = False
) -> AsyncConnectionPool[Any]:
    """Build this process's pool, unopened: open it after the process forks.

    With `autocommit`, a lone statement is one round trip, not three (BEGIN, it,
    COMMIT); work of several statements then needs an explicit `conn.transaction()`.
    """
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=1,
        max_idle=MAX_IDLE,
        timeout=POOL_TIMEOUT,
        open=False,
        name=name,
        kwargs={**CONNECTION_KWARGS, "row_factory": dict_row, "autocommit": autocommit},
    )


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open one short-lived connection, for the CLI and migrations."""
    return psycopg.connect(url, **{**CONNECTION_KWARGS, **kwargs})
