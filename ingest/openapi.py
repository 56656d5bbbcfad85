"""The OpenAPI 3.1 document, generated from the routes and the models: GET /openapi.json.

Each endpoint carries its `Operation` (the `documented` decorator): what it is, who may
call it, the model its body decodes to, and the answers it gives, each with the model
it encodes and, for errors, the codes it can carry. `build_document` walks the app's
routes and turns those, and the JSON Schema msgspec derives from the models, into the
document. Nothing in it is written twice: a route without an Operation is an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import auth as security
from .bodies import ErrorBody

F = TypeVar("F")

JSON: Final = "application/json"
REQUEST_ID_HEADER: Final = {"$ref": "#/components/headers/XRequestId"}


@dataclass(frozen=True)
class Answer:
    """One documented response: its status, when it is given, and what it carries."""

    status: int
    description: str
    model: Any = ErrorBody
    media_type: str = JSON
    #: The error codes a 4xx or 5xx can carry.
    codes: tuple[str, ...] = ()
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: For text/event-stream: the models of the events' data, by event name.
    events: dict[str, Any] = field(default_factory=dict)
    example: str | None = None


def failure(status: int, description: str, *codes: str) -> Answer:
    """An error answer, `{"error": {"code", "message"}}` with one of `codes`."""
    headers = {"Retry-After": {"schema": {"type": "string"}}} if status in (429, 503) else {}
    return Answer(status, description, codes=codes, headers=headers)


#: Answers many operations share.
UNAUTHENTICATED: Final = Answer(
    401,
    "No credentials, or credentials that prove nothing: a bad or expired session token, "
    "an unknown key, a malformed X-User-Id, or a service key without X-User-Id.",
    codes=("unauthenticated",),
    headers={"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
)
USER_DELETED: Final = failure(403, "The user was deleted in Clerk.", "user_deleted")
NO_SUCH_CHAT: Final = failure(
    404, "No chat with this id for this user (someone else's looks the same).", "not_found"
)
DATABASE_DOWN: Final = failure(503, "Postgres is unavailable; retry.", "database_unavailable")
TOO_MANY_STREAMS: Final = failure(
    429,
    "The user (AIWRAP_USER_MAX_STREAMS) or this server (AIWRAP_MAX_STREAMS) holds as many "
    "open streams as allowed; close one or retry after Retry-After seconds.",
    "too_many_streams",
)
STORES_DOWN: Final = failure(
    503, "Redis or Postgres is unavailable.", "redis_unavailable", "database_unavailable"
)


@dataclass(frozen=True)
class Parameter:
    """A path, query or header parameter."""

    name: str
    where: str
    description: str
    #: The type of its value (a model, or a type msgspec can describe).
    schema: Any = str
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """What one endpoint is, as the document describes it."""

    operation_id: str
    tag: str
    summary: str
    answers: Sequence[Answer]
    security: Sequence[dict[str, list[str]]] = security.ANYONE
    request: Any = None
    parameters: Sequence[Parameter] = ()
    #: When empty, the endpoint's docstring.
    description: str = ""


def documented(operation: Operation) -> Callable[[F], F]:
    """Attach `operation` to an endpoint; its docstring becomes the description."""

    def attach(endpoint: F) -> F:
        endpoint.__openapi__ = operation  # type: ignore[attr-defined]
        return endpoint

    return attach


def template(path: str) -> str:
    """A Starlette path as an OpenAPI path template: `{id:uuid}` is `{id}`."""
    return re.sub(r"\{(\w+)(?::\w+)?\}", r"{\1}", path)


def _description(endpoint: Any) -> str:
    doc = endpoint.__doc__ or ""
    return re.sub(r"\s*\n\s*", " ", doc.strip())


class Document:
    """Accumulates operations and the models they name, then renders the document."""

    def __init__(self) -> None:
        self.models: list[Any] = []
        self.paths: dict[str, dict[str, Any]] = {}

    def ref(self, model: Any) -> dict[str, Any]:
        """A reference to the model's schema (any of them, for a tuple of models), or for a
        plain type its schema itself."""
        if isinstance(model, tuple):
            return {"anyOf": [self.ref(each) for each in model]}
        if not (isinstance(model, type) and issubclass(model, msgspec.Struct)):
            return msgspec.json.schema(model)
        if model not in self.models:
            if any(m.__name__ == model.__name__ for m in self.models):
                raise TypeError(f"Two models are named {model.__name__}: rename one.")
            self.models.append(model)
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def add(self, path: str, method: str, endpoint: Any) -> None:
        operation: Operation | None = getattr(endpoint, "__openapi__", None)
        if operation is None:
            raise LookupError(f"{method.upper()} {path} has no Operation: decorate it.")
        item: dict[str, Any] = {
            "operationId": operation.operation_id,
            "tags": [operation.tag],
            "summary": operation.summary,
            "description": operation.description or _description(endpoint),
            "security": list(operation.security),
            "responses": {str(a.status): self.answer(a) for a in operation.answers},
        }
        parameters = [
            *(
                Parameter(name, "path", f"The {name} in the path.", str, True)
                for name in re.findall(r"\{(\w+)\}", template(path))
                if name not in {p.name for p in operation.parameters}
            ),
            *operation.parameters,
        ]
        if parameters:
            item["parameters"] = [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "description": p.description,
                    "schema": self.ref(p.schema),
                }
                for p in parameters
            ]
        if operation.request is not None:
            item["requestBody"] = {
                "required": True,
                "description": (operation.request.__doc__ or "").strip(),
                "content": {JSON: {"schema": self.ref(operation.request)}},
            }
        self.paths.setdefault(template(path), {})[method] = item

    def answer(self, answer: Answer) -> dict[str, Any]:
        headers = {"X-Request-Id": REQUEST_ID_HEADER, **answer.headers}
        if not answer.media_type:  # no body
            return {"description": answer.description, "headers": headers}
        content: dict[str, Any]
        if answer.media_type == JSON:
            schema = self.ref(answer.model)
            if answer.codes:
                code = {"properties": {"code": {"enum": list(answer.codes)}}}
                schema = {"allOf": [schema, {"properties": {"error": code}}]}
            content = {JSON: {"schema": schema}}
        else:
            media: dict[str, Any] = {"schema": {"type": "string"}}
            if answer.events:
                media["x-events"] = {name: self.ref(m) for name, m in answer.events.items()}
            if answer.example is not None:
                media["example"] = answer.example
            content = {answer.media_type: media}
        return {"description": answer.description, "headers": headers, "content": content}

    def render(self) -> dict[str, Any]:
        _, schemas = msgspec.json.schema_components(
            self.models, ref_template="#/components/schemas/{name}"
        )
        return {
            "openapi": "3.1.0",
            "info": INFO,
            "servers": [{"url": "/"}],
            "tags": TAGS,
            "security": list(security.USER),
            "paths": self.paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": security.SCHEMES,
                "headers": {
                    "XRequestId": {
                        "description": "The request's id: the one it sent, or a new one.",
                        "schema": {"type": "string"},
                    }
                },
            },
        }


INFO: Final = {
    "title": "aiwrap ingest",
    "version": "0.1.0",
    "summary": "Clerk identity sync, streamed chat, exact metering and budgets.",
    "description": (
        'Errors are `{"error": {"code", "message"}}`, with the codes each operation lists. '
        "Unknown paths are 404 `not_found`, a method a path does not take is 405 "
        "`method_not_allowed`, and every GET also answers HEAD. Every response carries "
        "`X-Request-Id` (the request's own, if it sent one)."
    ),
    "license": {"name": "MIT", "identifier": "MIT"},
}
TAGS: Final = [
    {"name": "chat", "description": "Chats and their streams."},
    {"name": "history", "description": "Past chats and usage."},
    {"name": "admin", "description": "Service-key routes."},
    {"name": "webhooks", "description": "Clerk, through Svix."},
    {"name": "operations", "description": "Health, readiness, metrics."},
]


def build_document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The document for these routes (every one must carry its Operation)."""
    document = Document()
    for route in routes:
        if not isinstance(route, Route):
            raise TypeError(f"{route!r} is not a plain Route; describe it first.")
        for method in sorted(route.methods or ()):
            if method != "HEAD":  # Starlette answers HEAD for every GET by itself
                document.add(route.path, method.lower(), route.endpoint)
    return document.render()


_rendered: dict[int, bytes] = {}


@documented(
    Operation(
        "getOpenApi",
        "operations",
        "This document",
        [Answer(200, "The OpenAPI 3.1 document, generated from the routes and models.", dict)],
    )
)
async def openapi(request: Request) -> Response:
    """Generated once per process from the app's routes and their models."""
    key = id(request.app)
    if key not in _rendered:
        _rendered[key] = msgspec.json.encode(build_document(request.app.routes))
    return Response(_rendered[key], media_type=JSON)


routes: list[BaseRoute] = [Route("/openapi.json", openapi, methods=["GET"])]
