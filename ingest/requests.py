"""What every /v1 route does with its request: who is calling, the body as its typed
model, the chat id in the path, a priced model, and Postgres or Redis outages answered
as 503. The body reader with its size limit (read_body) serves the webhook route too.

Errors are `{"error": {"code", "message"}}`; a message names the field and what is wrong
with it. The ingest pool holds one connection, so each route takes it once, does all its
reads in one go, and gives it back before any Redis I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from core import decoding, metering
from core.errors import InvalidInput
from core.faults import is_transient

from .auth import Caller, authenticate
from .errors import ApiError
from .state import IngestState

T = TypeVar("T")


class NotFound(ApiError):
    """No such chat for this caller (it may be someone else's: that looks the same)."""

    def __init__(self) -> None:
        super().__init__(404, "not_found", "No chat with this id.")


@asynccontextmanager
async def database(state: IngestState) -> AsyncIterator[Any]:
    """The pool's one connection, with an outage answered as 503."""
    try:
        async with state.pool.connection() as conn:
            yield conn
    except Exception as error:
        if not is_transient(error):
            raise
        raise ApiError(
            503,
            "database_unavailable",
            "The database is unavailable. Retry shortly.",
            headers={"Retry-After": "1"},
        ) from error


@contextmanager
def redis_errors(unavailable: Callable[[], ApiError] | None = None) -> Iterator[None]:
    """A Redis outage answered as 503: `unavailable()`, or else `redis_unavailable`."""
    try:
        yield
    except Exception as error:
        if not is_transient(error):
            raise
        if unavailable is not None:
            raise unavailable() from error
        raise ApiError(
            503,
            "redis_unavailable",
            "Redis is unavailable. Retry shortly.",
            headers={"Retry-After": "1"},
        ) from error


@lru_cache(maxsize=4)
def prices(path: Path | None) -> dict[str, metering.Price]:
    """The price table, read once per process (and per AIWRAP_PRICES)."""
    return metering.load_prices(path)


def check_priced(state: IngestState, model: str, field: str = "model") -> None:
    """Refuse a model aiwrap has no price for: it could never be metered."""
    if metering.price_for(prices(state.settings.prices_path), model) is None:
        raise InvalidInput(
            field, f"{model!r} is not a model aiwrap has a price for.", code="unknown_model"
        )


def caller(request: Request, *, allow_cookie: bool = False) -> Caller:
    """Who is calling (see ingest/auth.py), or 401."""
    return authenticate(request, IngestState.of(request).settings, allow_cookie=allow_cookie)


def chat_id(request: Request) -> str:
    """The path's chat id in canonical form; anything that is not a UUID is no chat."""
    try:
        return str(uuid.UUID(request.path_params["id"]))
    except ValueError:
        raise NotFound() from None


async def read_body(
    receive: Receive, declared: str, limit: int, too_large: Callable[[], ApiError]
) -> bytes:
    """The request body, or too_large()'s error (a 413) as soon as it is known to exceed
    `limit` bytes.

    `declared` is the content-length header ("" when absent), which may be wrong.
    """
    if declared.isdigit() and int(declared) > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_model(request: Request, model: type[T], limit: int) -> T:
    """The body as a `model`, refusing more than `limit` bytes before reading them."""
    body = await read_body(
        request.receive,
        request.headers.get("content-length", ""),
        limit,
        lambda: ApiError(
            413, "request_too_large", f"The request body is over the {limit}-byte limit."
        ),
    )
    try:
        return decoding.decode(model, body)
    except ValueError:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None


def iso(value: datetime) -> str:
    """A timestamp in this API's form: ISO 8601, UTC, with a Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_text(value: str) -> str:
    """An ISO timestamp written by someone else, in this API's form when it parses."""
    try:
        return iso(datetime.fromisoformat(value))
    except ValueError:
        return value


def exchange_fields(row: dict[str, Any]) -> dict[str, Any]:
    """An exchange row of core/history.py, its time in this API's form."""
    return {**row, "created_at": iso(row["created_at"])}
