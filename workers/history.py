"""A user's exchanges as Postgres records them: one by id, or a page of history.

Rows are dicts shaped as the API shows an exchange (`created_at` still a datetime). An
in-flight row keeps prompt_logs.status's default 'ok' with a NULL completion and
metadata.state 'running' (see docs/chat-contract.md); these statements report it as
'running'. The cost is the exchange's one `token_usage` row, 0 before it is metered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

#: Columns of one exchange as the API shows it.
EXCHANGE_COLUMNS: Final = """
       p.id::text AS id, p.created_at, p.model, p.prompt, p.completion,
       CASE WHEN p.status = 'ok' AND p.completion IS NULL AND p.metadata->>'state' = 'running'
            THEN 'running' ELSE p.status END AS status,
       p.prompt_tokens, p.completion_tokens, COALESCE(u.cost_microcents, 0) AS cost_microcents,
       p.latency_ms, p.metadata->>'finish_reason' AS finish_reason
"""

SELECT_EXCHANGE: Final = f"""
SELECT {EXCHANGE_COLUMNS}, p.metadata
  FROM prompt_logs p LEFT JOIN token_usage u ON u.prompt_log_id = p.id
 WHERE p.id = %(id)s AND p.user_id = %(user_id)s
"""

#: A page of history, newest first. `created_at <= before_at` lets idx_log_user_time bound
#: the scan; the row comparison breaks ties on id, so equal timestamps never gap or repeat.
SELECT_HISTORY: Final = f"""
SELECT {EXCHANGE_COLUMNS}
  FROM prompt_logs p LEFT JOIN token_usage u ON u.prompt_log_id = p.id
 WHERE p.user_id = %(user_id)s
   AND (%(before_at)s::timestamptz IS NULL
        OR (p.created_at <= %(before_at)s
            AND (p.created_at, p.id) < (%(before_at)s, %(before_id)s::uuid)))
 ORDER BY p.created_at DESC, p.id DESC
 LIMIT %(limit)s
"""


async def find_exchange(
    conn: psycopg.AsyncConnection[Any], user_id: str, exchange_id: str
) -> dict[str, Any] | None:
    """The user's exchange with this id (metadata included), or None: none, or not theirs."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(SELECT_EXCHANGE, {"id": exchange_id, "user_id": user_id})
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
        SELECT_HISTORY,
        {"user_id": user_id, "before_at": before_at, "before_id": before_id, "limit": limit},
    )
    return await cursor.fetchall()
