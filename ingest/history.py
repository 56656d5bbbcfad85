"""GET /v1/chats (the caller's exchanges, newest first) and GET /v1/usage (this month's).

History is keyset-paginated on idx_log_user_time: `next_before` is an opaque cursor for
the last row of a page, and passing it back as `before` gives the next page, with no
overlap and no gap even when rows share a timestamp. The SQL is core/history.py's.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from core import history, metering
from core.errors import InvalidInput

from . import auth
from .auth import ensure_active, require_user
from .bodies import ExchangeSummary, HistoryPage, ModelUsage, Usage
from .openapi import (
    DATABASE_DOWN,
    UNAUTHENTICATED,
    USER_DELETED,
    Answer,
    Operation,
    Parameter,
    documented,
    failure,
)
from .requests import caller, database, exchange_fields
from .responses import BodyResponse
from .state import IngestState

DEFAULT_PAGE: Final = 20
MAX_PAGE: Final = 100


#: A cursor is the (created_at, id) of a page's last row, as JSON, in URL-safe base64.
Cursor = tuple[datetime, uuid.UUID]
#: Longer than any cursor this server issues.
MAX_CURSOR_CHARS: Final = 200


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = msgspec.json.encode((created_at, uuid.UUID(row_id)))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor this server issued, or 400: decoded by its type, so that whatever a
    caller sends (nesting included) is refused at its first wrong byte."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = msgspec.json.decode(raw, type=Cursor)
    except (binascii.Error, ValueError, msgspec.MsgspecError):
        raise InvalidInput("before", "not a cursor this server issued (use next_before).") from None
    return at, str(row_id)


def page_size(raw: str) -> int:
    """The `limit` parameter: ASCII digits only (`'²'.isdigit()` is true), 1 to MAX_PAGE."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidInput("limit", f"must be an integer from 1 to {MAX_PAGE}.")
    return int(raw)


@documented(
    Operation(
        "listChats",
        "history",
        "The caller's chats, newest first",
        security=auth.USER,
        parameters=[
            Parameter(
                "limit", "query", f"Chats per page, 1 to {MAX_PAGE} (default {DEFAULT_PAGE}).", int
            ),
            Parameter("before", "query", "The next_before of the previous page.", str),
        ],
        answers=[
            Answer(200, "A page; next_before is null on the last.", HistoryPage),
            failure(400, "limit or before is not valid.", "invalid_request"),
            UNAUTHENTICATED,
            USER_DELETED,
            DATABASE_DOWN,
        ],
    )
)
async def list_chats(request: Request) -> Response:
    """Keyset-paginated: pass next_before back as before for the next page, with no
    overlap and no gap even when chats share a timestamp."""
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    limit = page_size(request.query_params.get("limit", str(DEFAULT_PAGE)))
    before = request.query_params.get("before")
    cursor = decode_cursor(before) if before else None
    async with database(state) as conn:
        await ensure_active(conn, user_id)
        # One row more than the page tells whether there is a next page.
        rows = await history.history_page(conn, user_id, limit=limit + 1, before=cursor)
    page = rows[:limit]
    next_before = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return BodyResponse(
        HistoryPage(
            items=[ExchangeSummary(**exchange_fields(r)) for r in page], next_before=next_before
        )
    )


@documented(
    Operation(
        "getUsage",
        "history",
        "This month's usage against the budget",
        security=auth.USER,
        answers=[
            Answer(200, "Tokens and cost this UTC month, by model.", Usage),
            UNAUTHENTICATED,
            USER_DELETED,
            DATABASE_DOWN,
        ],
    )
)
async def usage(request: Request) -> Response:
    """Costs are integers in micro-cents (a millionth of a cent); remaining is null when
    there is no cap."""
    state = IngestState.of(request)
    user_id = require_user(caller(request))
    async with database(state) as conn:
        await ensure_active(conn, user_id)
        month = await metering.month_usage(conn, user_id)
    return BodyResponse(
        Usage(
            month=month.month,
            tokens_used=month.tokens_used,
            monthly_token_budget=month.monthly_token_budget,
            remaining=month.remaining,
            cost_microcents=month.cost_microcents,
            by_model=[ModelUsage(m.model, m.tokens, m.cost_microcents) for m in month.by_model],
        )
    )


routes: list[BaseRoute] = [
    Route("/v1/chats", list_chats, methods=["GET"]),
    Route("/v1/usage", usage, methods=["GET"]),
]
