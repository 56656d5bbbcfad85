"""GET /v1/chats and GET /v1/usage: history pages and this month's usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from core.metering import month_start
from core.settings import Settings

from .chat_support import (
    Db,
    add_exchange,
    add_user,
    as_user,
    assert_error,
    other_user,
)


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 12, 100])
def test_history_pages_have_no_gap_or_overlap_when_timestamps_tie(
    http: httpx.Client, settings: Settings, db: Db, user_id: str, limit: int
) -> None:
    tie = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=5)
    for at, count in ((tie + timedelta(seconds=1), 3), (tie, 7), (tie - timedelta(seconds=1), 2)):
        for _ in range(count):
            add_exchange(db, user_id, created_at=at)
    add_exchange(db, other_user(), created_at=tie)  # never shown to user_id
    expected = [
        r["id"]
        for r in db.execute(
            "SELECT id::text FROM prompt_logs WHERE user_id = %s ORDER BY created_at DESC, id DESC",
            (user_id,),
        )
    ]
    seen: list[str] = []
    before: str | None = None
    for _ in range(20):
        params = {"limit": limit, **({"before": before} if before else {})}
        page = http.get("/v1/chats", params=params, headers=as_user(settings, user_id)).json()
        assert len(page["items"]) <= limit
        seen += [item["id"] for item in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == expected
    assert len(expected) == 12


def test_history_items_carry_the_exchange(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id, completion="Yo.", tokens=(2, 1), cost=90)
    page = http.get("/v1/chats", headers=as_user(settings, user_id)).json()
    assert page["next_before"] is None
    (item,) = page["items"]
    assert item["id"] == chat_id
    assert {k: item[k] for k in ("model", "status", "prompt", "completion", "cost_microcents")} == {
        "model": "gpt-4o-mini",
        "status": "ok",
        "prompt": "hi",
        "completion": "Yo.",
        "cost_microcents": 90,
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"before": "garbage!"}, "before"),
        ({"before": "WzEsMl0"}, "before"),  # valid base64 of [1,2], not a cursor
    ],
)
def test_bad_history_parameters_are_400(
    http: httpx.Client, settings: Settings, user_id: str, params: dict[str, str], field: str
) -> None:
    response = http.get("/v1/chats", params=params, headers=as_user(settings, user_id))
    assert_error(response, 400, "invalid_request", f"{field}:")


# -- GET /v1/usage ------------------------------------------------------------------------


def test_usage_counts_this_calendar_month_by_model(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    add_user(db, user_id, budget=1000)
    add_exchange(db, user_id, tokens=(100, 50), cost=4500)
    add_exchange(db, user_id, tokens=(10, 5), cost=450)
    add_exchange(db, user_id, created_at=month_start() - timedelta(seconds=1), tokens=(999, 999))
    db.execute(
        "INSERT INTO token_usage (user_id, model, prompt_tokens, completion_tokens,"
        " cost_microcents) VALUES (%s, 'gpt-4o', 20, 10, 15000)",
        (user_id,),
    )
    body = http.get("/v1/usage", headers=as_user(settings, user_id)).json()
    assert body == {
        "month": datetime.now(UTC).strftime("%Y-%m"),
        "tokens_used": 195,
        "monthly_token_budget": 1000,
        "remaining": 805,
        "cost_microcents": 19950,
        "by_model": [
            {"model": "gpt-4o", "tokens": 30, "cost_microcents": 15000},
            {"model": "gpt-4o-mini", "tokens": 165, "cost_microcents": 4950},
        ],
    }


def test_usage_without_a_cap_has_null_remaining(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    body = http.get("/v1/usage", headers=as_user(settings, user_id)).json()
    assert body["remaining"] is None
    assert body["monthly_token_budget"] == 0
    assert body["by_model"] == []
