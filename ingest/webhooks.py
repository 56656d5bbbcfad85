"""POST /webhooks/clerk (being written: see issue 3)."""

from starlette.routing import BaseRoute

routes: list[BaseRoute] = []
