"""The identity actor: Clerk events in any order converge to Clerk's state.

Events are applied straight through `apply_change` on real connections, through
the real broker and worker, and raced against a port of the TypeScript seed's
`recordClerkEvent`, which loses those races.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from workers import identity
from workers.broker import IDENTITY_QUEUE, WakingRedisBroker
from workers.db import CONNECTION_KWARGS
from workers.errors import InvalidEvent
from workers.identity import (
    apply_change,
    is_tombstoned,
    parse_clerk_event,
    provision_user,
    prune_deliveries,
)
from workers.logs import configure_logging
from workers.settings import Settings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = 1_767_225_600_000  # 2026-01-01, in ms
BUDGET = 25_000


# --- Building Clerk events ---------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One state of a Clerk user, as a user.created/updated event carries it."""

    user_id: str
    updated_at: int
    first_name: str | None = "Ada"
    last_name: str | None = "Lovelace"
    email: str | None = "ada@example.com"
    image_url: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "image_url": self.image_url,
            "updated_at": EPOCH + timedelta(milliseconds=self.updated_at),
        }


def user_event(kind: str, v: Version) -> dict[str, Any]:
    """A Clerk user.created or user.updated envelope, shaped like Clerk's."""
    addresses = [{"id": "idn_other", "email_address": "old@example.com", "object": "email_address"}]
    if v.email is not None:
        addresses.insert(0, {"id": "idn_primary", "email_address": v.email})
    return {
        "object": "event",
        "type": kind,
        "timestamp": v.updated_at + 3,
        "instance_id": "ins_test",
        "data": {
            "object": "user",
            "id": v.user_id,
            # The primary address is not first: the seed took the first one.
            "email_addresses": list(reversed(addresses)),
            "primary_email_address_id": "idn_primary" if v.email is not None else None,
            "first_name": v.first_name,
            "last_name": v.last_name,
            "image_url": v.image_url,
            "created_at": T0,
            "updated_at": v.updated_at,
            "public_metadata": {},
        },
    }


def delete_event(user_id: str, timestamp: int) -> dict[str, Any]:
    return {
        "object": "event",
        "type": "user.deleted",
        "timestamp": timestamp,
        "data": {"object": "user", "id": user_id, "deleted": True},
    }


def new_user_id() -> str:
    return f"user_{uuid.uuid4().hex[:24]}"


def svix_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


# --- Applying events ----------------------------------------------------------


async def _apply_all(url: str, deliveries: list[tuple[str, dict[str, Any]]], budget: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, **CONNECTION_KWARGS) as conn:
        for delivery_id, event in deliveries:
            await apply_change(conn, delivery_id, parse_clerk_event(event), budget)


def apply_events(
    url: str, deliveries: list[tuple[str, dict[str, Any]]], budget: int = BUDGET
) -> None:
    """Apply deliveries one after another, as one worker would."""
    asyncio.run(_apply_all(url, deliveries, budget))


def race(*actions: Callable[[], None]) -> None:
    """Run each action on its own thread, released together by a barrier."""
    barrier = threading.Barrier(len(actions))
    errors: list[BaseException] = []

    def run(action: Callable[[], None]) -> None:
        try:
            barrier.wait(10)
            action()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors


def racing_applier(url: str, delivery: tuple[str, dict[str, Any]]) -> Callable[[], None]:
    """An action applying one delivery with aiwrap's algorithm, on its own connection."""

    def act() -> None:
        asyncio.run(_apply_all(url, [delivery], BUDGET))

    return act


def user_row(db: psycopg.Connection[dict[str, Any]], user_id: str) -> dict[str, Any] | None:
    return db.execute(
        'SELECT id, email, first_name, last_name, image_url, updated_at FROM "user" WHERE id = %s',
        (user_id,),
    ).fetchone()


def profile_row(db: psycopg.Connection[dict[str, Any]], user_id: str) -> dict[str, Any] | None:
    return db.execute(
        "SELECT display_name, default_model, monthly_token_budget FROM user_profiles"
        " WHERE user_id = %s",
        (user_id,),
    ).fetchone()


@pytest.fixture(scope="module")
def conn(migrated: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection for the whole module, for Hypothesis tests."""
    with psycopg.connect(migrated, autocommit=True, row_factory=dict_row) as c:
        yield c


# --- Parsing -----------------------------------------------------------------


def test_the_primary_email_is_the_address_whose_id_is_primary_not_the_first() -> None:
    change = parse_clerk_event(user_event("user.created", Version("user_a", T0)))
    assert isinstance(change, identity.UserChanged)
    assert change.email == "ada@example.com"
    assert change.display_name == "Ada Lovelace"


def test_a_user_without_a_primary_email_has_a_null_email() -> None:
    change = parse_clerk_event(user_event("user.updated", Version("user_a", T0, email=None)))
    assert isinstance(change, identity.UserChanged)
    assert change.email is None


def test_a_delete_timestamp_in_seconds_covers_the_whole_second() -> None:
    seconds = parse_clerk_event(delete_event("user_a", T0 // 1000))
    millis = parse_clerk_event(delete_event("user_a", T0 + 1))
    assert isinstance(seconds, identity.UserDeleted)
    assert isinstance(millis, identity.UserDeleted)
    assert seconds.deleted_at == EPOCH + timedelta(milliseconds=T0 + 999)
    assert millis.deleted_at == EPOCH + timedelta(milliseconds=T0 + 1)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ([], "not a JSON object"),
        ({"type": "user.created", "data": "x"}, "data is not an object"),
        ({"type": "user.created", "data": {"id": 7}}, "data.id"),
        ({"type": "user.updated", "data": {"id": "user_a"}}, "updated_at"),
        ({"type": "user.updated", "data": {"id": "user_a", "updated_at": "soon"}}, "updated_at"),
        (
            {"type": "user.updated", "data": {"id": "user_a", "updated_at": 1, "first_name": 3}},
            "first_name",
        ),
        ({"type": "user.deleted", "data": {"id": "user_a"}}, "timestamp"),
    ],
)
def test_a_schema_invalid_event_is_refused_with_the_reason(event: Any, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_clerk_event(event)


# --- Applying, one at a time -----------------------------------------------------


def test_a_created_user_gets_its_row_and_a_profile_with_the_default_budget(
    migrated: str, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    v = Version(user_id, T0)
    apply_events(migrated, [(svix_id(), user_event("user.created", v))])
    assert user_row(db, user_id) == v.row()
    assert profile_row(db, user_id) == {
        "display_name": "Ada Lovelace",
        "default_model": "gpt-4o-mini",
        "monthly_token_budget": BUDGET,
    }


def test_later_events_never_reset_the_profile(
    migrated: str, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    apply_events(migrated, [(svix_id(), user_event("user.created", Version(user_id, T0)))])
    db.execute(
        "UPDATE user_profiles SET monthly_token_budget = 7, display_name = 'Ada L.'"
        " WHERE user_id = %s",
        (user_id,),
    )
    later = Version(user_id, T0 + 10, first_name="Augusta")
    apply_events(migrated, [(svix_id(), user_event("user.updated", later))], budget=99)
    assert user_row(db, user_id) == later.row()
    profile = profile_row(db, user_id)
    assert profile is not None
    assert (profile["display_name"], profile["monthly_token_budget"]) == ("Ada L.", 7)
    assert db.execute(
        "SELECT count(*) AS n FROM user_profiles WHERE user_id = %s", (user_id,)
    ).fetchone() == {"n": 1}


def test_a_duplicate_delivery_does_no_work_twice(
    migrated: str, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    delivery = svix_id()
    first = Version(user_id, T0)

    async def apply_twice() -> list[identity.Outcome]:
        async with await psycopg.AsyncConnection.connect(migrated, **CONNECTION_KWARGS) as c:
            one = await apply_change(
                c, delivery, parse_clerk_event(user_event("user.created", first)), BUDGET
            )
            # Same svix-id, even with other content: Svix redelivers the same bytes.
            two = await apply_change(
                c,
                delivery,
                parse_clerk_event(
                    user_event("user.updated", Version(user_id, T0 + 5, first_name="X"))
                ),
                BUDGET,
            )
            return [one, two]

    outcomes = asyncio.run(apply_twice())
    assert outcomes == [
        identity.Outcome(duplicate=False, changed=True),
        identity.Outcome(duplicate=True, changed=False),
    ]
    assert user_row(db, user_id) == first.row()


def test_a_stale_update_after_a_delete_does_not_resurrect_the_user(
    migrated: str, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    apply_events(
        migrated,
        [
            (svix_id(), user_event("user.created", Version(user_id, T0))),
            (svix_id(), delete_event(user_id, T0 + 100)),
            (svix_id(), user_event("user.updated", Version(user_id, T0 + 50))),
            (svix_id(), user_event("user.created", Version(user_id, T0))),
        ],
    )
    assert user_row(db, user_id) is None
    assert profile_row(db, user_id) is None
    assert db.execute(
        "SELECT deleted_at FROM user_tombstones WHERE user_id = %s", (user_id,)
    ).fetchone() == {"deleted_at": EPOCH + timedelta(milliseconds=T0 + 100)}


def test_a_tombstone_keeps_the_latest_delete_time(
    migrated: str, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    apply_events(
        migrated,
        [
            (svix_id(), delete_event(user_id, T0 + 100)),
            (svix_id(), delete_event(user_id, T0 + 10)),
        ],
    )
    row = db.execute(
        "SELECT deleted_at FROM user_tombstones WHERE user_id = %s", (user_id,)
    ).fetchone()
    assert row == {"deleted_at": EPOCH + timedelta(milliseconds=T0 + 100)}


def test_provisioning_creates_a_minimal_user_that_the_next_webhook_fills_in(
    migrated: str, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    async def provision() -> bool:
        async with await psycopg.AsyncConnection.connect(migrated, **CONNECTION_KWARGS) as c:
            async with c.transaction():
                first = await provision_user(c, user_id, BUDGET)
            async with c.transaction():
                again = await provision_user(c, user_id, 1)
            return first and again and not await is_tombstoned(c, user_id)

    assert asyncio.run(provision())
    row = user_row(db, user_id)
    assert row is not None and row["updated_at"] is None
    assert profile_row(db, user_id) == {
        "display_name": None,
        "default_model": "gpt-4o-mini",
        "monthly_token_budget": BUDGET,
    }
    v = Version(user_id, T0)
    apply_events(migrated, [(svix_id(), user_event("user.updated", v))])
    assert user_row(db, user_id) == v.row()


def test_provisioning_a_deleted_user_creates_nothing(
    migrated: str, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    apply_events(migrated, [(svix_id(), delete_event(user_id, T0))])

    async def provision() -> tuple[bool, bool]:
        async with (
            await psycopg.AsyncConnection.connect(migrated, **CONNECTION_KWARGS) as c,
            c.transaction(),
        ):
            return await provision_user(c, user_id, BUDGET), await is_tombstoned(c, user_id)

    assert asyncio.run(provision()) == (False, True)
    assert user_row(db, user_id) is None
    assert profile_row(db, user_id) is None


# --- The property: any order of any history converges -------------------------------


@dataclass(frozen=True)
class History:
    """Everything Clerk sent for one user, and what the table must end up holding."""

    user_id: str
    versions: tuple[Version, ...]
    deleted_at: int | None  # the delete event's envelope timestamp

    def deliveries(self) -> list[tuple[str, dict[str, Any]]]:
        out = [
            (svix_id(), user_event("user.created" if i == 0 else "user.updated", v))
            for i, v in enumerate(self.versions)
        ]
        if self.deleted_at is not None:
            out.append((svix_id(), delete_event(self.user_id, self.deleted_at)))
        return out

    def expected_row(self) -> dict[str, Any] | None:
        if self.deleted_at is not None:
            return None
        return max(self.versions, key=lambda v: v.updated_at).row()


names = st.one_of(st.none(), st.sampled_from(["Ada", "Grace", "Alan", "Édouard", ""]))


@st.composite
def histories(draw: st.DrawFn) -> History:
    user_id = new_user_id()
    gaps = draw(st.lists(st.integers(1, 5_000), min_size=1, max_size=8))
    versions = []
    at = T0 + draw(st.integers(0, 10_000))
    for gap in gaps:
        at += gap
        versions.append(
            Version(
                user_id,
                at,
                first_name=draw(names),
                last_name=draw(names),
                email=draw(st.one_of(st.none(), st.emails(domains=st.just("example.com")))),
                image_url=draw(st.one_of(st.none(), st.just(f"https://img.example.com/{at}.png"))),
            )
        )
    deleted_at = None
    if draw(st.booleans()):
        # Clerk sends milliseconds; an integer in seconds must work too.
        after = at + draw(st.integers(1, 5_000))
        deleted_at = after if draw(st.booleans()) else after // 1000 + 1
    return History(user_id, tuple(versions), deleted_at)


@st.composite
def shuffled_deliveries(
    draw: st.DrawFn,
) -> tuple[list[History], list[tuple[str, dict[str, Any]]]]:
    users = draw(st.lists(histories(), min_size=1, max_size=4))
    deliveries = [d for h in users for d in h.deliveries()]
    # Svix redelivers: some deliveries come again, same svix-id and bytes.
    duplicates = draw(st.lists(st.sampled_from(deliveries), max_size=len(deliveries)))
    return users, draw(st.permutations(deliveries + duplicates))


def assert_converged(
    db: psycopg.Connection[dict[str, Any]], users: list[History], budget: int = BUDGET
) -> None:
    for h in users:
        assert user_row(db, h.user_id) == h.expected_row(), h
        profile = profile_row(db, h.user_id)
        if h.deleted_at is not None:
            assert profile is None
            assert is_tombstoned_sync(db, h.user_id)
        else:
            assert profile is not None
            assert profile["monthly_token_budget"] == budget
            display_names = {
                identity.UserChanged(
                    h.user_id, None, v.first_name, v.last_name, None, EPOCH
                ).display_name
                for v in h.versions
            }
            assert profile["display_name"] in display_names


def is_tombstoned_sync(db: psycopg.Connection[dict[str, Any]], user_id: str) -> bool:
    row = db.execute(
        "SELECT 1 AS one FROM user_tombstones WHERE user_id = %s", (user_id,)
    ).fetchone()
    return row is not None


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


# --- Through the real broker and worker ---------------------------------------


def test_events_sent_to_the_actor_are_applied_by_the_worker(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    db: psycopg.Connection[dict[str, Any]],
    user_id: str,
) -> None:
    actor = broker.get_actor(identity.ACTOR_NAME)
    latest = Version(user_id, T0 + 2, first_name="Grace")
    for v, kind in ((latest, "user.updated"), (Version(user_id, T0), "user.created")):
        actor.send(svix_id(), user_event(kind, v))
    broker.join(IDENTITY_QUEUE, timeout=10_000)
    worker.join()
    assert user_row(db, user_id) == latest.row()


def test_a_schema_invalid_event_is_dead_lettered_with_a_log_line_saying_why(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    user_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "INFO")
    actor = broker.get_actor(identity.ACTOR_NAME)
    bad = {"type": "user.updated", "data": {"id": user_id, "updated_at": "yesterday"}}
    message = actor.send(svix_id(), bad)
    broker.join(IDENTITY_QUEUE, timeout=10_000)
    worker.join()
    dead = broker.client.zrange(f"{broker.namespace}:{IDENTITY_QUEUE}.XQ", 0, -1)
    # The Redis broker keys messages by an id of its own.
    assert message.options["redis_message_id"].encode() in dead
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    assert any(
        line.get("event") == "clerk_event_dead_lettered"
        and line.get("logger") == "workers.identity"
        and "updated_at" in line["reason"]
        for line in lines
    ), lines


def test_a_lost_database_connection_is_retried_until_the_event_applies(
    settings: Settings, db: psycopg.Connection[dict[str, Any]], user_id: str
) -> None:
    from workers.broker import build_broker

    app_name = f"aiwrap_retry_{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in settings.database_url else "?"
    url = f"{settings.database_url}{separator}application_name={app_name}"
    broker = build_broker(Settings(database_url=url, redis_url=settings.redis_url))
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        # The worker's pooled connection dies under it, as in a Postgres restart.
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        killed: list[Any] = []
        while not killed and datetime.now(UTC) < deadline:
            killed = db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (app_name,),
            ).fetchall()
        assert killed, "the worker's connection never appeared"
        v = Version(user_id, T0)
        broker.get_actor(identity.ACTOR_NAME).send(svix_id(), user_event("user.created", v))
        broker.join(IDENTITY_QUEUE, timeout=20_000)
        worker.join()
        assert user_row(db, user_id) == v.row()
    finally:
        worker.stop()
        broker.close()


# --- The seed's two bugs, as races ---------------------------------------------------


def seed_record_clerk_event(
    conn: psycopg.Connection[Any],
    event: dict[str, Any],
    between_read_and_insert: Callable[[], None] = lambda: None,
) -> bool:
    """A faithful Python port of the seed's recordClerkEvent (autocommit, no lock)."""
    d = event["data"]
    if event["type"] == "user.deleted":
        return (
            conn.execute('DELETE FROM "user" WHERE id = %s RETURNING id', (d["id"],)).fetchone()
            is not None
        )
    email = ((d.get("email_addresses") or [{}])[0]).get("email_address")
    event_at = EPOCH + timedelta(milliseconds=d.get("updated_at") or 0)
    fields = (email, d.get("first_name"), d.get("last_name"), d.get("image_url"), event_at)
    updated = conn.execute(
        'UPDATE "user" SET email = %s, first_name = %s, last_name = %s, image_url = %s,'
        " updated_at = %s WHERE id = %s AND (updated_at IS NULL OR updated_at < %s) RETURNING id",
        (*fields, d["id"], event_at),
    ).fetchone()
    if updated:
        return True
    if conn.execute('SELECT id FROM "user" WHERE id = %s', (d["id"],)).fetchone():
        return False
    between_read_and_insert()
    return (
        conn.execute(
            'INSERT INTO "user" (id, email, first_name, last_name, image_url, updated_at)'
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
            (d["id"], *fields),
        ).fetchone()
        is not None
    )


def seed_applier(
    url: str, event: dict[str, Any], pause: Callable[[], None] = lambda: None
) -> Callable[[], None]:
    def act() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            seed_record_clerk_event(conn, event, pause)

    return act


ATTEMPTS = 40


def test_concurrent_first_deliveries_keep_the_newest_state_where_the_seed_loses_it(
    migrated: str, db: psycopg.Connection[dict[str, Any]]
) -> None:
    def newest_survives(use_seed: bool) -> bool:
        user_id = new_user_id()
        older, newer = Version(user_id, T0, first_name="Old"), Version(user_id, T0 + 1)
        events = [user_event("user.created", older), user_event("user.updated", newer)]
        if use_seed:
            # Both deliveries find no row, then race to INSERT; whichever lands
            # first wins, and the other is dropped, newer or not.
            both_read = threading.Barrier(2)
            race(*(seed_applier(migrated, e, lambda: both_read.wait(10)) for e in events))
        else:
            race(*(racing_applier(migrated, (svix_id(), e)) for e in events))
        return user_row(db, user_id) == newer.row()

    seed_lost = any(not newest_survives(use_seed=True) for _ in range(ATTEMPTS))
    assert seed_lost, f"the seed never lost the newest state in {ATTEMPTS} races"
    assert all(newest_survives(use_seed=False) for _ in range(ATTEMPTS // 2))


def test_a_late_update_racing_a_delete_never_resurrects_the_user_where_the_seed_does(
    migrated: str, db: psycopg.Connection[dict[str, Any]]
) -> None:
    def stays_deleted(use_seed: bool) -> bool:
        user_id = new_user_id()
        created, late = Version(user_id, T0), Version(user_id, T0 + 5, first_name="Late")
        delete = delete_event(user_id, T0 + 10)
        if use_seed:
            with psycopg.connect(migrated, autocommit=True) as c:
                seed_record_clerk_event(c, user_event("user.created", created))
            race(
                seed_applier(migrated, delete),
                seed_applier(migrated, user_event("user.updated", late)),
            )
        else:
            apply_events(migrated, [(svix_id(), user_event("user.created", created))])
            race(
                racing_applier(migrated, (svix_id(), delete)),
                racing_applier(migrated, (svix_id(), user_event("user.updated", late))),
            )
        return user_row(db, user_id) is None

    seed_resurrected = 0
    for _ in range(ATTEMPTS):
        if not stays_deleted(use_seed=True):
            seed_resurrected += 1
            break
    assert seed_resurrected, f"the seed never resurrected a user in {ATTEMPTS} races"
    assert all(stays_deleted(use_seed=False) for _ in range(ATTEMPTS // 2))


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

    async def apply_in_groups() -> list[identity.Outcome]:
        outcomes = []
        async with await psycopg.AsyncConnection.connect(migrated, **CONNECTION_KWARGS) as c:
            for start in range(0, len(parsed), group):
                outcomes += await identity.apply_changes(c, parsed[start : start + group], BUDGET)
        return outcomes

    outcomes = asyncio.run(apply_in_groups())
    assert_converged(conn, users)
    # Each svix-id did its work once; every later delivery of it was a duplicate.
    first_seen: set[str] = set()
    for (delivery_id, _), outcome in zip(parsed, outcomes, strict=True):
        assert outcome.duplicate == (delivery_id in first_seen)
        first_seen.add(delivery_id)


def test_events_queued_before_the_worker_starts_wait_for_its_pool_instead_of_failing(
    broker: WakingRedisBroker, db: psycopg.Connection[dict[str, Any]]
) -> None:
    versions = [Version(new_user_id(), T0) for _ in range(20)]
    actor = broker.get_actor(identity.ACTOR_NAME)
    for v in versions:
        actor.send(svix_id(), user_event("user.created", v))
    failures: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = failures.append  # type: ignore[method-assign]
    logging.getLogger("dramatiq").addHandler(handler)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        broker.join(IDENTITY_QUEUE, timeout=20_000)
        worker.join()
    finally:
        worker.stop()
        logging.getLogger("dramatiq").removeHandler(handler)
    assert all(user_row(db, v.user_id) == v.row() for v in versions)
    # Not one failed and was retried: each waited for the pool to open.
    assert [r.getMessage() for r in failures] == []


def test_deliveries_older_than_any_svix_retry_are_pruned(
    db: psycopg.Connection[Any], migrated: str, user_id: str
) -> None:
    old, recent = f"msg_old_{user_id}", f"msg_recent_{user_id}"
    db.execute(
        "INSERT INTO clerk_deliveries (svix_id, applied_at) VALUES"
        " (%s, now() - interval '4 days'), (%s, now() - interval '1 day')",
        [old, recent],
    )

    async def prune() -> int:
        async with await psycopg.AsyncConnection.connect(migrated) as conn:
            return await prune_deliveries(conn)

    assert asyncio.run(prune()) >= 1
    kept = {
        row["svix_id"]
        for row in db.execute(
            "SELECT svix_id FROM clerk_deliveries WHERE svix_id = ANY(%s)", [[old, recent]]
        )
    }
    assert kept == {recent}
