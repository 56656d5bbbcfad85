"""Prices, cost and monthly usage, against the real database."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from core.errors import ConfigurationError
from core.metering import (
    Price,
    admission,
    cost_microcents,
    load_prices,
    month_start,
    month_usage,
    next_month,
    price_for,
)

Row = dict[str, Any]
MINI = Price(15, 60)


def test_gpt_4o_mini_costs_15_and_60_microcents_per_token() -> None:
    prices = load_prices()
    assert price_for(prices, "gpt-4o-mini") == MINI
    assert cost_microcents(MINI, 1_000_000, 1_000_000) == 75_000_000  # $0.15 + $0.60
    assert price_for(prices, "gpt-4o-mini-2024-07-18") == MINI
    assert price_for(prices, "no-such-model") is None
    assert all(type(p.input) is int and type(p.output) is int for p in prices.values())


def test_a_price_file_overrides_adds_and_unprices_models(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "gpt-4o-mini": {"input": 1, "output": 2},
                "house-model": {"input": 0, "output": 7},
                "gpt-4o": None,
            }
        )
    )
    prices = load_prices(path)
    assert price_for(prices, "gpt-4o-mini") == Price(1, 2)
    assert price_for(prices, "house-model") == Price(0, 7)
    assert price_for(prices, "gpt-4o") is None
    assert price_for(prices, "gpt-4.1-mini") == Price(40, 160)


@pytest.mark.parametrize(
    "entry",
    [
        {"input": 0.15, "output": 60},
        {"input": 15},
        {"input": -1, "output": 1},
        {"input": True, "output": 1},
        "cheap",
    ],
)
def test_a_price_that_is_not_whole_microcents_stops_the_worker_with_the_file_named(
    tmp_path: Path,
    entry: Any,
) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o-mini": entry}))
    with pytest.raises(ConfigurationError, match=r"prices\.json"):
        load_prices(path)


def test_an_unreadable_price_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_prices(path)


@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
)
def test_cost_is_exact_integer_arithmetic_and_adds_up(
    price_in: int,
    price_out: int,
    p1: int,
    c1: int,
    p2: int,
    c2: int,
) -> None:
    price = Price(price_in, price_out)
    one, two = cost_microcents(price, p1, c1), cost_microcents(price, p2, c2)
    assert type(one) is int
    assert one == p1 * price_in + c1 * price_out
    assert cost_microcents(price, p1 + p2, c1 + c2) == one + two


def test_months_are_calendar_months_in_utc() -> None:
    start = month_start(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert start == datetime(2026, 12, 1, tzinfo=UTC)
    assert next_month(start) == datetime(2027, 1, 1, tzinfo=UTC)


def arrange(db: psycopg.Connection[Row], user_id: str, budget: int) -> None:
    db.execute('INSERT INTO "user" (id) VALUES (%s)', (user_id,))
    db.execute(
        "INSERT INTO user_profiles (user_id, monthly_token_budget) VALUES (%s, %s)",
        (user_id, budget),
    )
    rows = [
        ("gpt-4o-mini", 100, 50, 4_500, "2026-03-02T00:00:00Z"),
        ("gpt-4o-mini", 10, 5, 450, "2026-03-31T23:59:59Z"),
        ("gpt-4o", 20, 10, 15_000, "2026-03-15T12:00:00Z"),
        ("gpt-4o", 999, 999, 1, "2026-02-28T23:59:59Z"),  # last month
        ("gpt-4o", 999, 999, 1, "2026-04-01T00:00:00Z"),  # next month
    ]
    for model, prompt, completion, cost, at in rows:
        db.execute(
            "INSERT INTO token_usage (user_id, model, prompt_tokens, completion_tokens, "
            "cost_microcents, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
            (user_id, model, prompt, completion, cost, at),
        )


async def usage_and_budget(url: str, user_id: str, now: datetime) -> tuple[Any, bool]:
    """The month's usage, and the one budget check's answer (what admission reads)."""
    async with await AsyncConnection.connect(url, row_factory=dict_row) as conn:
        return await month_usage(conn, user_id, now), (
            await admission(conn, user_id, now)
        ).over_budget


def test_month_usage_sums_this_calendar_month_by_model(
    db: psycopg.Connection[Row],
    migrated: str,
    user_id: str,
) -> None:
    arrange(db, user_id, budget=1_000)
    usage, over = asyncio.run(
        usage_and_budget(migrated, user_id, datetime(2026, 3, 20, tzinfo=UTC))
    )

    assert usage.month == "2026-03"
    assert usage.tokens_used == 150 + 15 + 30
    assert usage.cost_microcents == 4_500 + 450 + 15_000
    assert [(m.model, m.tokens, m.cost_microcents) for m in usage.by_model] == [
        ("gpt-4o", 30, 15_000),
        ("gpt-4o-mini", 165, 4_950),
    ]
    assert usage.monthly_token_budget == 1_000
    assert usage.remaining == 1_000 - 195
    assert over is False


@pytest.mark.parametrize(("budget", "over"), [(195, True), (196, False), (0, False)])
def test_a_user_is_over_budget_once_their_tokens_reach_a_nonzero_budget(
    db: psycopg.Connection[Row],
    migrated: str,
    user_id: str,
    budget: int,
    over: bool,
) -> None:
    arrange(db, user_id, budget=budget)
    usage, is_over = asyncio.run(
        usage_and_budget(migrated, user_id, datetime(2026, 3, 20, tzinfo=UTC))
    )
    assert is_over is over
    assert usage.remaining == (None if budget == 0 else max(budget - 195, 0))


def test_a_user_without_a_profile_has_no_usage_and_no_cap(migrated: str, user_id: str) -> None:
    usage, over = asyncio.run(usage_and_budget(migrated, user_id, datetime.now(UTC)))
    assert (usage.tokens_used, usage.remaining, over) == (0, None, False)


def test_admission_reads_tombstone_default_model_and_budget_in_one_statement(
    migrated: str, user_id: str
) -> None:
    async def check() -> None:
        async with await AsyncConnection.connect(
            migrated, autocommit=True, row_factory=dict_row
        ) as conn:
            unknown = await admission(conn, user_id)
            assert (unknown.deleted, unknown.default_model, unknown.over_budget) == (
                False,
                None,
                False,
            )
            await conn.execute('INSERT INTO "user" (id) VALUES (%s)', [user_id])
            await conn.execute(
                "INSERT INTO user_profiles (user_id, default_model, monthly_token_budget)"
                " VALUES (%s, 'gpt-4o', 10)",
                [user_id],
            )
            await conn.execute(
                "INSERT INTO token_usage (user_id, model, prompt_tokens, completion_tokens)"
                " VALUES (%s, 'gpt-4o', 4, 6)",
                [user_id],
            )
            at_budget = await admission(conn, user_id)
            assert (at_budget.default_model, at_budget.over_budget) == ("gpt-4o", True)
            await conn.execute("INSERT INTO user_tombstones VALUES (%s, now())", [user_id])
            assert (await admission(conn, user_id)).deleted

    asyncio.run(check())
