"""GroupApplier: the worker process's group commit of identity events, on a real Runtime."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from core import jobs
from core.settings import Settings
from workers.identity import apply, grouping
from workers.runtime import Runtime

T0 = 1_767_225_600_000  # 2026-01-01, in ms


def created(user_id: str) -> jobs.UserChanged | jobs.UserDeleted:
    return jobs.parse_clerk_event(
        {"type": "user.created", "data": {"id": user_id, "updated_at": T0, "first_name": "Ada"}}
    )


def test_events_that_arrive_while_deliveries_are_pruned_are_applied_too(
    settings: Settings, db: psycopg.Connection[dict[str, Any]]
) -> None:
    first, second = (f"user_{uuid.uuid4().hex[:24]}" for _ in range(2))

    async def scenario() -> None:
        runtime = Runtime(settings)
        await runtime.open()
        try:
            applier = grouping.GroupApplier(runtime)
            pruning, resume = asyncio.Event(), asyncio.Event()
            prune = applier._prune

            async def held_prune() -> None:
                pruning.set()
                await resume.wait()
                await prune()

            applier._prune = held_prune  # type: ignore[method-assign]
            applier.next_prune = 0.0  # due now
            one = asyncio.create_task(applier.apply(f"msg_{uuid.uuid4().hex}", created(first)))
            await pruning.wait()
            # Arrives while the drain is busy pruning: it must not be left behind.
            two = asyncio.create_task(applier.apply(f"msg_{uuid.uuid4().hex}", created(second)))
            await asyncio.sleep(0)
            resume.set()
            # A guard against hanging, not a measurement: a stranded event never completes.
            outcomes = await asyncio.wait_for(asyncio.gather(one, two), timeout=60)
            assert list(outcomes) == [apply.Outcome(duplicate=False, changed=True)] * 2
        finally:
            await runtime.close()

    asyncio.run(scenario())
    rows = db.execute(
        'SELECT u.id, p.display_name FROM "user" u JOIN user_profiles p ON p.user_id = u.id'
        " WHERE u.id = ANY(%s)",
        [[first, second]],
    ).fetchall()
    assert sorted(rows, key=lambda r: r["id"]) == sorted(
        [{"id": first, "display_name": "Ada"}, {"id": second, "display_name": "Ada"}],
        key=lambda r: r["id"],
    )
