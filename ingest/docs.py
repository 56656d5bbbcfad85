"""GET /docs: an interactive page over /openapi.json, to read the API and try it.

The page is Swagger UI, whose assets come with the `swagger-ui-py` package and are
served from here: nothing is fetched from a CDN, so it works offline and behind a
firewall. Only the files the page loads are served.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from .errors import ApiError
from .openapi import Answer, Operation, Parameter, documented, failure


def _assets() -> Path:
    # Found without importing the package, whose handlers this page does not need.
    spec = find_spec("swagger_ui")
    assert spec is not None and spec.submodule_search_locations, "swagger-ui-py is missing"
    return Path(next(iter(spec.submodule_search_locations))) / "static"


ASSETS: Final = _assets()
SERVED: Final = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
    }
)
PAGE: Final = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>aiwrap API</title>
  <link rel="icon" href="/docs/assets/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout",
    });
  </script>
</body>
</html>
"""


@documented(
    Operation(
        "docs",
        "operations",
        "This API, to read and try",
        [Answer(200, "An HTML page (Swagger UI) over /openapi.json.", media_type="text/html")],
    )
)
async def docs(_request: Request) -> Response:
    """Its assets are served from /docs/assets, out of the swagger-ui-py package."""
    return HTMLResponse(PAGE)


@documented(
    Operation(
        "docsAsset",
        "operations",
        "An asset of the docs page",
        [
            Answer(200, "The file (CSS, JavaScript or an icon).", media_type="*/*"),
            failure(404, "Not one of the page's files.", "not_found"),
        ],
        parameters=[Parameter("name", "path", "The file's name.", str)],
    )
)
async def docs_asset(request: Request) -> Response:
    """Only the files the page loads."""
    name = request.path_params["name"]
    if name not in SERVED:
        raise ApiError(404, "not_found", "No such asset of the docs page.")
    return FileResponse(ASSETS / name, headers={"Cache-Control": "public, max-age=86400"})


routes: list[BaseRoute] = [
    Route("/docs", docs, methods=["GET"]),
    Route("/docs/assets/{name}", docs_asset, methods=["GET"]),
]
