"""Applying parsed Clerk events to Postgres: the user table converges, whatever the order.

Events apply in transactions that first take a per-user advisory lock, so two
events for one user never interleave, then record each Svix delivery and
create, update or delete the user. Updates are guarded by Clerk's
`updated_at`, so an older event never overwrites a newer one, and a delete
leaves a tombstone, so no event older than the delete brings the user back.
The result is the same whatever order, duplication or concurrency the
deliveries come in. A group of events is one call of aiwrap_apply_clerk_events
(core/sql/functions): one transaction, one round trip.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import tuple_row

from core.jobs import UserChanged, UserDeleted
from core.sqlfiles import statements
from core.storable import storable_json

SQL = statements(__file__)

Delivery = tuple[str, UserChanged | UserDeleted]


@dataclass(frozen=True)
class Outcome:
    """What applying one delivery did."""

    duplicate: bool  # this svix-id was applied before: nothing was done
    changed: bool  # a row was created, updated or deleted


def _as_json(svix_id: str, change: UserChanged | UserDeleted) -> dict[str, Any]:
    if isinstance(change, UserDeleted):
        return {
            "kind": "deleted",
            "svix_id": svix_id,
            "user_id": change.user_id,
            "at": change.deleted_at.isoformat(),
        }
    return {
        "kind": "changed",
        "svix_id": svix_id,
        "user_id": change.user_id,
        "at": change.updated_at.isoformat(),
        "email": change.email,
        "first_name": change.first_name,
        "last_name": change.last_name,
        "image_url": change.image_url,
        "display_name": change.display_name,
    }


async def apply_changes(
    conn: AsyncConnection[Any], deliveries: Sequence[Delivery], default_budget: int
) -> list[Outcome]:
    """Apply parsed events in one transaction on `conn` (idle, not in a transaction).

    Returns one outcome per event, in order. Events for one user apply in the
    order given; the result does not depend on it.
    """
    params = {
        # Clerk's strings as Postgres can store them (no NUL: core/storable.py).
        "events": json.dumps(
            storable_json([_as_json(svix_id, change) for svix_id, change in deliveries])
        ),
        "budget": default_budget,
    }
    autocommit = conn.autocommit
    if not autocommit:
        # One statement is one implicit transaction; else psycopg would open
        # one of its own first, and commit it after: two more round trips.
        await conn.set_autocommit(True)
    try:
        async with conn.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute(SQL["apply_clerk_events"], params)
            rows = await cursor.fetchall()
    finally:
        if not autocommit:
            await conn.set_autocommit(False)
    if len(rows) != len(deliveries):
        raise RuntimeError(f"applying {len(deliveries)} events returned {len(rows)} outcomes")
    return [Outcome(duplicate=duplicate, changed=changed) for duplicate, changed in rows]


async def apply_change(
    conn: AsyncConnection[Any],
    svix_id: str,
    change: UserChanged | UserDeleted,
    default_budget: int,
) -> Outcome:
    """Apply one parsed event in its own transaction on `conn`."""
    (outcome,) = await apply_changes(conn, [(svix_id, change)], default_budget)
    return outcome


async def prune_deliveries(conn: AsyncConnection[Any]) -> int:
    """Forget applied deliveries older than any Svix retry; return how many."""
    async with conn.transaction():
        cursor = await conn.execute(SQL["prune_deliveries"])
    return cursor.rowcount
