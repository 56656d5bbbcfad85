"""Prices, cost and budgets: what an upstream call costs and what a user has used.

Money is integers end to end. A price is micro-cents per token (a micro-cent is
a millionth of a cent), so `$0.15 per million tokens` is 15; a call's cost is
`prompt * input + completion * output`, exact, with no rounding anywhere.

The built-in table is `core/prices.json`; the file at `AIWRAP_PRICES`
overrides it model by model (`null` unprices a model). Both have the shape
`{"model": {"input": int, "output": int}}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

from .errors import ConfigurationError
from .sqlfiles import statements

SQL = statements(__file__)

BUILTIN_PRICES = Path(__file__).with_name("prices.json")

#: OpenAI's dated snapshots ("gpt-4o-mini-2024-07-18") cost what their alias costs.
SNAPSHOT_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Price:
    """What one model costs, in micro-cents per input and per output token."""

    input: int
    output: int


Prices = Mapping[str, Price]


def _parse(raw: Any, source: str) -> dict[str, Price | None]:
    if not isinstance(raw, dict):
        raise ConfigurationError(f"Price file {source} must hold a JSON object of models.")
    prices: dict[str, Price | None] = {}
    for model, entry in raw.items():
        if entry is None:
            prices[model] = None
            continue
        values = [entry.get(k) if isinstance(entry, dict) else None for k in ("input", "output")]
        # bool is an int in Python; a float would put rounding on the money path.
        if not all(type(v) is int and v >= 0 for v in values):
            raise ConfigurationError(
                f"Price file {source}: {model!r} needs integer 'input' and 'output' "
                "micro-cents per token, 0 or more."
            )
        prices[model] = Price(values[0], values[1])  # type: ignore[arg-type]
    return prices


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigurationError(f"Price file {path} cannot be read: {error}") from None


def load_prices(path: Path | None = None) -> dict[str, Price]:
    """The built-in prices, overridden model by model by the file at `path`."""
    merged = _parse(_read(BUILTIN_PRICES), str(BUILTIN_PRICES))
    if path is not None:
        merged |= _parse(_read(path), str(path))
    return {model: price for model, price in merged.items() if price is not None}


def price_for(prices: Prices, model: str) -> Price | None:
    """The price of `model` (or of its undated alias), or None when it is unpriced."""
    return prices.get(model) or prices.get(SNAPSHOT_SUFFIX.sub("", model))


def cost_microcents(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """The exact cost of one call, in micro-cents."""
    return prompt_tokens * price.input + completion_tokens * price.output


def month_start(now: datetime | None = None) -> datetime:
    """Midnight UTC on the first day of `now`'s calendar month (default: this one)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


@dataclass(frozen=True)
class ModelUsage:
    """One model's share of a month's usage."""

    model: str
    tokens: int
    cost_microcents: int


@dataclass(frozen=True)
class MonthUsage:
    """A user's usage in one calendar month (UTC), against their budget."""

    month: str
    tokens_used: int
    monthly_token_budget: int
    cost_microcents: int
    by_model: tuple[ModelUsage, ...]

    @property
    def remaining(self) -> int | None:
        """Tokens left this month; None when there is no cap."""
        if self.monthly_token_budget == 0:
            return None
        return max(self.monthly_token_budget - self.tokens_used, 0)


async def month_usage(
    conn: AsyncConnection[Any], user_id: str, now: datetime | None = None
) -> MonthUsage:
    """The user's tokens and cost this calendar month (UTC), by model, with their budget."""
    start = month_start(now)
    params = {"user_id": user_id, "start": start, "end": next_month(start)}
    async with conn.cursor() as cur:
        await cur.execute(SQL["usage_by_model"], params)
        rows = await cur.fetchall()
        await cur.execute(SQL["budget"], params)
        budget_row = await cur.fetchone()
    by_model = tuple(
        ModelUsage(
            _col(r, 0, "model"), int(_col(r, 1, "tokens")), int(_col(r, 2, "cost_microcents"))
        )
        for r in rows
    )
    return MonthUsage(
        month=start.strftime("%Y-%m"),
        tokens_used=sum(m.tokens for m in by_model),
        monthly_token_budget=int(_col(budget_row, 0, "monthly_token_budget")) if budget_row else 0,
        cost_microcents=sum(m.cost_microcents for m in by_model),
        by_model=by_model,
    )


def _col(row: Any, index: int, name: str) -> Any:
    # Callers' connections may use tuple or dict rows.
    return row[name] if isinstance(row, dict) else row[index]


@dataclass(frozen=True)
class Admission:
    """What decides whether a chat request is accepted, read in one statement."""

    deleted: bool
    default_model: str | None
    over_budget: bool


async def admission(
    conn: AsyncConnection[Any], user_id: str, now: datetime | None = None
) -> Admission:
    """Tombstone, default model and budget state of a user, in one round trip."""
    start = month_start(now)
    async with conn.cursor() as cur:
        await cur.execute(
            SQL["admission"], {"user_id": user_id, "start": start, "end": next_month(start)}
        )
        row = await cur.fetchone()
    assert row is not None  # the LEFT JOIN always yields one row
    return Admission(
        deleted=bool(_col(row, 0, "deleted")),
        default_model=_col(row, 1, "default_model"),
        over_budget=bool(_col(row, 2, "over_budget")),
    )
