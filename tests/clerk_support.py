"""Clerk events for the identity tests: building them, applying them, racing them, and
Hypothesis histories of them."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import strategies as st

from core import jobs
from core.db import CONNECTION_KWARGS
from core.jobs import parse_clerk_event
from workers.identity.apply import apply_change

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T0 = 1_767_225_600_000  # 2026-01-01, in ms
BUDGET = 25_000


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


async def apply_all(url: str, deliveries: list[tuple[str, dict[str, Any]]], budget: int) -> None:
    async with await psycopg.AsyncConnection.connect(url, **CONNECTION_KWARGS) as conn:
        for delivery_id, event in deliveries:
            await apply_change(conn, delivery_id, parse_clerk_event(event), budget)


def apply_events(
    url: str, deliveries: list[tuple[str, dict[str, Any]]], budget: int = BUDGET
) -> None:
    """Apply deliveries one after another, as one worker would."""
    asyncio.run(apply_all(url, deliveries, budget))


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
        asyncio.run(apply_all(url, [delivery], BUDGET))

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
                jobs.UserChanged(
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
