"""The TypeScript seed's two bugs, reproduced as races against a port of its
`recordClerkEvent`, which loses them, and aiwrap's actor, which does not."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg

from .clerk_support import (
    EPOCH,
    T0,
    Version,
    apply_events,
    delete_event,
    new_user_id,
    race,
    racing_applier,
    svix_id,
    user_event,
    user_row,
)


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
