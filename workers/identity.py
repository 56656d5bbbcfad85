"""The Clerk-sync actor and its SQL.

Events apply in transactions that first take a per-user advisory lock, so two
events for one user never interleave, then record each Svix delivery and
create, update or delete the user. Updates are guarded by Clerk's
`updated_at`, so an older event never overwrites a newer one, and a delete
leaves a tombstone, so no event older than the delete brings the user back.
The result is the same whatever order, duplication or concurrency the
deliveries come in. For throughput, a worker process applies the events that
arrive together as one group: one transaction, one round trip, one call of
the `aiwrap_apply_clerk_events` function that schema.sql defines (see
GroupApplier).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import dramatiq
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import tuple_row

from . import metrics
from .broker import IDENTITY_QUEUE
from .db import is_transient, schema_behind
from .errors import InvalidEvent
from .logs import get_logger
from .runtime import Runtime

log = get_logger(__name__)

#: The actor ingest sends every handled Clerk event to.
ACTOR_NAME = "apply_clerk_event"
#: The Clerk event types aiwrap applies; others are acknowledged and dropped.
HANDLED_TYPES = frozenset({"user.created", "user.updated", "user.deleted"})

#: Milliseconds before the first retry of a transient failure, and the most
#: between two; retries go on until the event applies.
MIN_BACKOFF_MS = 100
MAX_BACKOFF_MS = 30_000
#: Retries of an unexpected (non-transient) error before it is dead-lettered;
#: with the backoff above they span a few seconds.
MAX_UNEXPECTED_RETRIES = 5
#: Most events applied in one transaction.
MAX_GROUP = 64

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Clerk's timestamps are milliseconds; anything below this is seconds.
SECONDS_BELOW = 1_000_000_000_000
#: datetime cannot go past the year 9999.
LARGEST_MS = 253_402_300_799_999

# Serialises every change to one user, for the length of the transaction.
# Transaction-scoped, so it works through PgBouncer in transaction mode. It
# must be its own statement: the statements after it then take their
# snapshots once the lock is held, and see everything the last holder committed.
LOCK_USER = "SELECT pg_advisory_xact_lock(hashtext(%(id)s))"

# A group of events applies in one call of this function (schema.sql), which
# takes the lock above for each user of the group, in key order, then applies
# the events one by one. One round trip, one statement to plan; the function's
# own statements are planned once per server backend.
APPLY_EVENTS = """
SELECT duplicate, changed FROM aiwrap_apply_clerk_events(%(events)s::jsonb, %(budget)s)
"""

PROVISION_USER = """
WITH tombstone AS (
    SELECT 1 FROM user_tombstones WHERE user_id = %(id)s
), created AS (
    INSERT INTO "user" (id) SELECT %(id)s WHERE NOT EXISTS (SELECT 1 FROM tombstone)
    ON CONFLICT (id) DO NOTHING
), profile AS (
    INSERT INTO user_profiles (user_id, monthly_token_budget)
    SELECT %(id)s, %(budget)s WHERE NOT EXISTS (SELECT 1 FROM tombstone)
    ON CONFLICT (user_id) DO NOTHING
)
SELECT NOT EXISTS (SELECT 1 FROM tombstone)
"""

IS_TOMBSTONED = "SELECT EXISTS (SELECT 1 FROM user_tombstones WHERE user_id = %(id)s)"


@dataclass(frozen=True)
class UserChanged:
    """A user.created or user.updated event, as the user table stores it."""

    user_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    image_url: str | None
    updated_at: datetime

    @property
    def display_name(self) -> str | None:
        return " ".join(name for name in (self.first_name, self.last_name) if name) or None


@dataclass(frozen=True)
class UserDeleted:
    """A user.deleted event: the user and the time of the delete."""

    user_id: str
    deleted_at: datetime


@dataclass(frozen=True)
class Outcome:
    """What applying one delivery did."""

    duplicate: bool  # this svix-id was applied before: nothing was done
    changed: bool  # a row was created, updated or deleted


def parse_clerk_event(event: Any) -> UserChanged | UserDeleted:
    """Read a handled Clerk event; raise InvalidEvent saying what is wrong with it."""
    if not isinstance(event, Mapping):
        raise InvalidEvent("the event is not a JSON object")
    kind = event.get("type")
    if kind not in HANDLED_TYPES:
        raise InvalidEvent(f"event type {kind!r} is not one of {sorted(HANDLED_TYPES)}")
    data = event.get("data")
    if not isinstance(data, Mapping):
        raise InvalidEvent("data is not an object")
    user_id = data.get("id")
    if not isinstance(user_id, str) or not user_id:
        raise InvalidEvent("data.id is not a non-empty string")
    if kind == "user.deleted":
        return UserDeleted(user_id, _event_time(event.get("timestamp")))
    updated_at = data.get("updated_at")
    if not _is_millis(updated_at):
        raise InvalidEvent("data.updated_at is not a timestamp in milliseconds")
    return UserChanged(
        user_id=user_id,
        email=_primary_email(data),
        first_name=_optional_str(data, "first_name"),
        last_name=_optional_str(data, "last_name"),
        image_url=_optional_str(data, "image_url"),
        updated_at=EPOCH + timedelta(milliseconds=updated_at),
    )


def _is_millis(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= LARGEST_MS


def _event_time(timestamp: object) -> datetime:
    if not _is_millis(timestamp):
        raise InvalidEvent("timestamp is not a time in milliseconds or seconds")
    if timestamp < SECONDS_BELOW:
        # A time in whole seconds could be any millisecond of that second:
        # take the last, so no update made within it outlives the delete.
        return EPOCH + timedelta(seconds=timestamp, milliseconds=999)
    return EPOCH + timedelta(milliseconds=timestamp)


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidEvent(f"data.{key} is neither a string nor null")


def _primary_email(data: Mapping[str, Any]) -> str | None:
    addresses = data.get("email_addresses") or []
    if not isinstance(addresses, list):
        raise InvalidEvent("data.email_addresses is not a list")
    primary_id = data.get("primary_email_address_id")
    if primary_id is None:
        return None
    for address in addresses:
        if isinstance(address, Mapping) and address.get("id") == primary_id:
            email = address.get("email_address")
            if not isinstance(email, str):
                raise InvalidEvent("the primary email address has no email_address string")
            return email
    return None


Delivery = tuple[str, "UserChanged | UserDeleted"]


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
        "events": json.dumps([_as_json(svix_id, change) for svix_id, change in deliveries]),
        "budget": default_budget,
    }
    autocommit = conn.autocommit
    if not autocommit:
        # One statement is one implicit transaction; else psycopg would open
        # one of its own first, and commit it after: two more round trips.
        await conn.set_autocommit(True)
    try:
        async with conn.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute(APPLY_EVENTS, params)
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


#: Svix retries a delivery for about 28 hours; remembering applied ones for
#: three days is plenty, and the dedupe is only an optimisation anyway.
PRUNE_DELIVERIES = """
DELETE FROM clerk_deliveries WHERE applied_at < now() - interval '3 days'
"""
#: Seconds between prunes, per worker process.
PRUNE_EVERY_S = 600.0


async def prune_deliveries(conn: AsyncConnection[Any]) -> int:
    """Forget applied deliveries older than any Svix retry; return how many."""
    async with conn.transaction():
        cursor = await conn.execute(PRUNE_DELIVERIES)
    return cursor.rowcount


class GroupApplier:
    """Applies the events of every actor call in this process, many per transaction.

    A worker process has one database connection, and an event costs little
    more than the round trip and the commit it waits for. So events that
    arrive while a transaction is in flight wait for it and then go together
    in the next one: one round trip and one commit for all of them. An idle
    system still applies each event at once.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pending: list[tuple[str, UserChanged | UserDeleted, asyncio.Future[Outcome]]] = []
        self.draining: asyncio.Task[None] | None = None
        self.next_prune = time.monotonic()

    async def apply(self, svix_id: str, change: UserChanged | UserDeleted) -> Outcome:
        """Apply one event; return once its transaction has committed."""
        applied: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.pending.append((svix_id, change, applied))
        if self.draining is None:
            self.draining = asyncio.create_task(self._drain())
        return await applied

    async def _drain(self) -> None:
        try:
            # Events that arrive during any await here wait in `pending`, so
            # the loop ends only once no await has come between its check of
            # `pending` and `draining` going back to None: none is left behind.
            while self.pending:
                if time.monotonic() >= self.next_prune:
                    self.next_prune = time.monotonic() + PRUNE_EVERY_S
                    await self._prune()
                batch, self.pending = self.pending[:MAX_GROUP], self.pending[MAX_GROUP:]
                await self._apply_group(batch)
        finally:
            self.draining = None

    async def _prune(self) -> None:
        try:
            async with self.runtime.pool.connection() as conn:
                pruned = await prune_deliveries(conn)
        except psycopg.Error as error:  # pruning can wait for the next time
            log.warning("clerk_deliveries_prune_failed", error=str(error))
            return
        if pruned:
            log.info("clerk_deliveries_pruned", deliveries=pruned)

    async def _apply_group(
        self, batch: list[tuple[str, UserChanged | UserDeleted, asyncio.Future[Outcome]]]
    ) -> None:
        budget = self.runtime.settings.default_monthly_token_budget
        try:
            async with self.runtime.pool.connection() as conn:
                try:
                    outcomes = await apply_changes(conn, [(s, c) for s, c, _ in batch], budget)
                except Exception as error:
                    if len(batch) == 1 or is_transient(error):
                        raise
                    # One event the database refuses must not fail the others:
                    # apply each on its own, so each fails or succeeds alone.
                    for svix_id, change, applied in batch:
                        try:
                            _settle(applied, await apply_change(conn, svix_id, change, budget))
                        except Exception as single_error:
                            _settle(applied, error=single_error)
                    return
        except Exception as error:
            for _, _, applied in batch:
                _settle(applied, error=error)
            return
        for (_, _, applied), outcome in zip(batch, outcomes, strict=True):
            _settle(applied, outcome)


def _settle(
    applied: asyncio.Future[Outcome],
    outcome: Outcome | None = None,
    error: BaseException | None = None,
) -> None:
    # A caller that gave up (its message was interrupted) has cancelled its future.
    if applied.done():
        return
    if error is not None:
        applied.set_exception(error)
    else:
        applied.set_result(outcome)  # type: ignore[arg-type]


async def provision_user(conn: AsyncConnection[Any], user_id: str, default_budget: int) -> bool:
    """Make sure `user_id` has a user row and a profile, inside the caller's transaction.

    Returns False, creating nothing, when the user was deleted. The row has
    no `updated_at`, so the next Clerk event for the user fills it in.
    """
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(LOCK_USER, {"id": user_id})
        await cur.execute(PROVISION_USER, {"id": user_id, "budget": default_budget})
        row = await cur.fetchone()
    assert row is not None
    provisioned: bool = row[0]
    return provisioned


async def is_tombstoned(conn: AsyncConnection[Any], user_id: str) -> bool:
    """True when `user_id` was deleted in Clerk and must never be recreated."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(IS_TOMBSTONED, {"id": user_id})
        row = await cur.fetchone()
    assert row is not None
    tombstoned: bool = row[0]
    return tombstoned


def should_retry(retries: int, error: BaseException) -> bool:
    """Transient failures retry until they succeed; anything else a few times only."""
    # Before `aiwrap migrate` has run there is no function to call: keep the events.
    return is_transient(error) or schema_behind(error) or retries < MAX_UNEXPECTED_RETRIES


def declare(broker: Any, runtime: Runtime) -> None:
    """Declare the identity actor on `broker`."""
    applier = GroupApplier(runtime)

    async def apply_clerk_event(svix_id: str, event: dict[str, Any]) -> None:
        try:
            change = parse_clerk_event(event)
        except InvalidEvent as error:
            event_type = event.get("type") if isinstance(event, dict) else None
            metrics.IDENTITY_EVENTS.labels(str(event_type)[:40], "dead_lettered").inc()
            log.error(
                "clerk_event_dead_lettered",
                svix_id=svix_id,
                reason=str(error),
                event_type=event_type,
            )
            raise
        outcome = await applier.apply(svix_id, change)
        result = "duplicate" if outcome.duplicate else "changed" if outcome.changed else "stale"
        metrics.IDENTITY_EVENTS.labels(event["type"], result).inc()
        log.debug(
            "clerk_event_applied",
            svix_id=svix_id,
            user_id=change.user_id,
            duplicate=outcome.duplicate,
            changed=outcome.changed,
        )

    dramatiq.actor(
        broker=broker,
        actor_name=ACTOR_NAME,
        queue_name=IDENTITY_QUEUE,
        throws=(InvalidEvent,),
        retry_when=should_retry,
        min_backoff=MIN_BACKOFF_MS,
        max_backoff=MAX_BACKOFF_MS,
    )(apply_clerk_event)
