"""The users aiwrap knows: provisioning one it has not seen, tombstones, chat settings.

A user's chat settings are their monthly token budget and default model, set by
`PUT /v1/admin/users/{user_id}/profile` and `aiwrap budget`. A user aiwrap has not seen
yet (Clerk's `user.created` may still be on its way) is provisioned first, with the
minimal user and profile rows the identity worker would write, so the setting sticks and
the later webhook fills in the rest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row, tuple_row

from .db import CONNECTION_KWARGS
from .sqlfiles import statements

SQL = statements(__file__)


async def provision_user(
    conn: psycopg.AsyncConnection[Any], user_id: str, default_budget: int
) -> bool:
    """Make sure `user_id` has a user row and a profile, inside the caller's transaction.

    Returns False, creating nothing, when the user was deleted. The row has
    no `updated_at`, so the next Clerk event for the user fills it in.
    """
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(SQL["provision_user"], {"id": user_id, "budget": default_budget})
        row = await cur.fetchone()
    assert row is not None
    provisioned: bool = row[0]
    return provisioned


async def is_tombstoned(conn: psycopg.AsyncConnection[Any], user_id: str) -> bool:
    """True when `user_id` was deleted in Clerk and must never be recreated."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(SQL["is_tombstoned"], {"id": user_id})
        row = await cur.fetchone()
    assert row is not None
    tombstoned: bool = row[0]
    return tombstoned


@dataclass(frozen=True)
class Profile:
    """The chat settings of one user."""

    user_id: str
    monthly_token_budget: int
    default_model: str


async def set_profile(
    conn: psycopg.AsyncConnection[Any],
    user_id: str,
    *,
    monthly_token_budget: int | None = None,
    default_model: str | None = None,
    default_budget: int = 0,
) -> Profile | None:
    """Set the given fields of the user's profile, provisioning the user first.

    Returns None when the user was deleted (tombstoned): nothing is written then.
    """
    async with conn.transaction():
        if not await provision_user(conn, user_id, default_budget):
            return None
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            SQL["update_profile"],
            {
                "user_id": user_id,
                "monthly_token_budget": monthly_token_budget,
                "default_model": default_model,
            },
        )
        row = await cursor.fetchone()
    if row is None:  # provision_user guarantees the profile row; this is a broken invariant
        raise RuntimeError(f"provision_user left no profile row for {user_id}")
    return Profile(**row)


async def get_profile(conn: psycopg.AsyncConnection[Any], user_id: str) -> Profile | None:
    """The user's profile, or None when aiwrap has none for them yet."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(SQL["select_profile"], {"user_id": user_id})
    row = await cursor.fetchone()
    return Profile(**row) if row else None


def set_profile_now(
    database_url: str,
    user_id: str,
    *,
    monthly_token_budget: int | None = None,
    default_model: str | None = None,
    default_budget: int = 0,
) -> Profile | None:
    """`set_profile` on a connection of its own, for the CLI (which has no event loop)."""

    async def run() -> Profile | None:
        async with await psycopg.AsyncConnection.connect(
            database_url, autocommit=True, **CONNECTION_KWARGS
        ) as conn:
            return await set_profile(
                conn,
                user_id,
                monthly_token_budget=monthly_token_budget,
                default_model=default_model,
                default_budget=default_budget,
            )

    return asyncio.run(run())
