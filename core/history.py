"""A user's exchanges as Postgres records them: one by id, or a page of history.

Rows are dicts shaped as the API shows an exchange (`created_at` still a datetime), read
from the aiwrap_exchanges view of schema.sql, which says how an in-flight row reads
(see docs/chat-contract.md) and what an exchange cost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .sqlfiles import statements

SQL = statements(__file__)


async def find_exchange(
    conn: psycopg.AsyncConnection[Any], user_id: str, exchange_id: str
) -> dict[str, Any] | None:
    """The user's exchange with this id (metadata included), or None: none, or not theirs."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(SQL["find_exchange"], {"id": exchange_id, "user_id": user_id})
    return await cursor.fetchone()


async def history_page(
    conn: psycopg.AsyncConnection[Any],
    user_id: str,
    *,
    limit: int,
    before: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """Up to `limit` of the user's exchanges, newest first, strictly older than `before`
    (the `(created_at, id)` of the last row of the previous page)."""
    before_at, before_id = before if before is not None else (None, None)
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        SQL["history_page"],
        {"user_id": user_id, "before_at": before_at, "before_id": before_id, "limit": limit},
    )
    return await cursor.fetchall()
