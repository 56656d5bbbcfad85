"""Parsing Clerk events, and applying them one at a time: guarded by updated_at,
tombstoned by deletes, provisioned for chats that beat the webhook."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from core import jobs
from core.db import CONNECTION_KWARGS
from core.errors import InvalidEvent
from core.jobs import parse_clerk_event
from core.settings import Settings
from core.users import is_tombstoned, provision_user
from workers.identity import apply
from workers.identity.apply import apply_change

from .clerk_support import (
    BUDGET,
    EPOCH,
    T0,
    Version,
    apply_events,
    delete_event,
    profile_row,
    svix_id,
    user_event,
    user_row,
)


def test_the_primary_email_is_the_address_whose_id_is_primary_not_the_first() -> None:
    change = parse_clerk_event(user_event("user.created", Version("user_a", T0)))
    assert isinstance(change, jobs.UserChanged)
    assert change.email == "ada@example.com"
    assert change.display_name == "Ada Lovelace"


def test_a_user_without_a_primary_email_has_a_null_email() -> None:
    change = parse_clerk_event(user_event("user.updated", Version("user_a", T0, email=None)))
    assert isinstance(change, jobs.UserChanged)
    assert change.email is None


def test_a_delete_timestamp_in_seconds_covers_the_whole_second() -> None:
    seconds = parse_clerk_event(delete_event("user_a", T0 // 1000))
    millis = parse_clerk_event(delete_event("user_a", T0 + 1))
    assert isinstance(seconds, jobs.UserDeleted)
    assert isinstance(millis, jobs.UserDeleted)
    assert seconds.deleted_at == EPOCH + timedelta(milliseconds=T0 + 999)
    assert millis.deleted_at == EPOCH + timedelta(milliseconds=T0 + 1)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ([], "^event: Expected `object`"),
        ({"type": "user.created", "data": "x"}, "^data: Expected `object`"),
        ({"type": "user.created", "data": {"id": 7}}, "^data.id: "),
        ({"type": "user.updated", "data": {"id": "user_a"}}, "^data.updated_at: required"),
        (
            {"type": "user.updated", "data": {"id": "user_a", "updated_at": "soon"}},
            "^data.updated_at",
        ),
        (
            {"type": "user.updated", "data": {"id": "user_a", "updated_at": 1, "first_name": 3}},
            "^data.first_name: ",
        ),
        ({"type": "user.deleted", "data": {"id": "user_a"}}, "^timestamp: required"),
        ({"type": "session.created", "data": {"id": "sess_1"}}, "^type: 'session.created'"),
    ],
)
def test_a_schema_invalid_event_is_refused_with_the_reason(event: Any, reason: str) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        parse_clerk_event(event)


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

    async def apply_twice() -> list[apply.Outcome]:
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
        apply.Outcome(duplicate=False, changed=True),
        apply.Outcome(duplicate=True, changed=False),
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


def test_a_delete_is_final_even_for_a_newer_create_and_every_route_agrees(
    migrated: str,
    db: psycopg.Connection[dict[str, Any]],
    http: httpx.Client,
    settings: Settings,
    user_id: str,
) -> None:
    # Clerk never reuses a deleted user's id: a newer create for it is refused, so the
    # user table and the routes that read the tombstone tell the same story.
    apply_events(
        migrated,
        [
            (svix_id(), user_event("user.created", Version(user_id, T0))),
            (svix_id(), delete_event(user_id, T0 + 100)),
            (svix_id(), user_event("user.created", Version(user_id, T0 + 10_000))),
            (svix_id(), user_event("user.updated", Version(user_id, T0 + 20_000))),
        ],
    )
    assert user_row(db, user_id) is None
    assert profile_row(db, user_id) is None
    headers = {"Authorization": f"Bearer {settings.api_keys[0]}", "X-User-Id": user_id}
    for response in (
        http.get("/v1/usage", headers=headers),
        http.get("/v1/chats", headers=headers),
        http.post("/v1/chat", json={"prompt": "hi"}, headers=headers),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "user_deleted"


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
