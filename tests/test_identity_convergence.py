"""The property: any order of any Clerk history, applied one by one or in groups of any
size, leaves exactly Clerk's state."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.db import CONNECTION_KWARGS
from core.jobs import parse_clerk_event
from workers.identity import apply
from workers.identity.apply import apply_change

from .clerk_support import (
    BUDGET,
    History,
    assert_converged,
    shuffled_deliveries,
    user_row,
)


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(shuffled_deliveries())
def test_any_order_of_any_history_leaves_exactly_clerks_state(
    migrated: str,
    conn: psycopg.Connection[dict[str, Any]],
    case: tuple[list[History], list[tuple[str, dict[str, Any]]]],
) -> None:
    users, deliveries = case
    deleted: set[str] = set()

    async def deliver_and_watch() -> None:
        async with await psycopg.AsyncConnection.connect(migrated, **CONNECTION_KWARGS) as c:
            for delivery_id, event in deliveries:
                await apply_change(c, delivery_id, parse_clerk_event(event), BUDGET)
                if event["type"] == "user.deleted":
                    deleted.add(event["data"]["id"])
                # Once deleted, a user never has a row again, at any step.
                for user_id in deleted:
                    assert user_row(conn, user_id) is None

    asyncio.run(deliver_and_watch())
    assert_converged(conn, users)


@hsettings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(shuffled_deliveries(), st.integers(1, 12))
def test_any_history_applied_in_groups_of_any_size_leaves_exactly_clerks_state(
    migrated: str,
    conn: psycopg.Connection[dict[str, Any]],
    case: tuple[list[History], list[tuple[str, dict[str, Any]]]],
    group: int,
) -> None:
    users, deliveries = case
    parsed = [(delivery_id, parse_clerk_event(event)) for delivery_id, event in deliveries]

    async def apply_in_groups() -> list[apply.Outcome]:
        outcomes = []
        async with await psycopg.AsyncConnection.connect(migrated, **CONNECTION_KWARGS) as c:
            for start in range(0, len(parsed), group):
                outcomes += await apply.apply_changes(c, parsed[start : start + group], BUDGET)
        return outcomes

    outcomes = asyncio.run(apply_in_groups())
    assert_converged(conn, users)
    # Each svix-id did its work once; every later delivery of it was a duplicate.
    first_seen: set[str] = set()
    for (delivery_id, _), outcome in zip(parsed, outcomes, strict=True):
        assert outcome.duplicate == (delivery_id in first_seen)
        first_seen.add(delivery_id)
