"""GET /openapi.json: the API description kept in the repo as ingest/openapi.json.

The document is written by hand; tests/test_openapi.py checks it against the app's real
routes, so neither can change without the other.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

DOCUMENT: Final = Path(__file__).with_name("openapi.json")


@lru_cache(maxsize=1)
def document() -> bytes:
    """The document's bytes, read once per process."""
    return DOCUMENT.read_bytes()


async def openapi(_request: Request) -> Response:
    return Response(document(), media_type="application/json")


routes: list[BaseRoute] = [Route("/openapi.json", openapi, methods=["GET"])]
