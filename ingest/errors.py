"""JSON errors: every 4xx and 5xx says what was wrong, in one shape.

`{"error": {"code": "...", "message": "..."}}`
"""

from __future__ import annotations

from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from core.errors import InvalidInput
from core.storable import storable

from .bodies import ErrorBody, ErrorDetail
from .responses import BodyResponse


class ApiError(Exception):
    """An error the edge answers with a status, a stable code and a sentence."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    # A message may quote what the caller sent (a field's name, a value): as text that
    # encodes, a lone surrogate or a NUL of theirs marked, not a 500 of ours.
    return BodyResponse(ErrorBody(ErrorDetail(code, storable(message)[0])), status, headers)


async def handle_api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def handle_invalid_input(_request: Request, exc: Exception) -> Response:
    """A field of the request that is missing, malformed or out of range: a 400 naming it."""
    assert isinstance(exc, InvalidInput)
    return error_response(400, exc.code, str(exc))


async def handle_http_exception(_request: Request, exc: Exception) -> Response:
    """Starlette's own 404, 405 and 413, in aiwrap's shape."""
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    messages = {
        404: "No such route.",
        405: "This route does not accept that method.",
        413: "The request body is larger than this route accepts.",
    }
    status = exc.status_code
    return error_response(
        status,
        codes.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_")),
        messages.get(status, str(exc.detail)),
        dict(exc.headers) if exc.headers else None,
    )
