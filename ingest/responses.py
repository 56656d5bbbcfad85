"""Responses encoded from the typed models of ingest/bodies.py."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from starlette.responses import Response


class BodyResponse(Response):
    """A JSON response whose body is one of ingest/bodies.py's models."""

    media_type = "application/json"

    def __init__(
        self,
        body: msgspec.Struct,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(msgspec.json.encode(body), status_code, headers)
