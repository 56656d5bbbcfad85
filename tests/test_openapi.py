"""The OpenAPI document against the real app: generated from its routes and models, the
same operations as its routes, valid OpenAPI 3.1, served at /openapi.json, and describing
what real requests actually get back (status, error code, body and SSE events)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route

from core import streams
from core.settings import Settings
from devstack.clerk import signed_request
from ingest.app import create_app
from ingest.openapi import build_document
from workers.consumer import WakingRedisBroker

METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
DOC_URI = "urn:aiwrap:openapi"


def load_document() -> dict[str, Any]:
    """The document generated for the app's routes."""
    app = create_app(Settings(database_url="postgresql://unused", redis_url="redis://unused"))
    return build_document(app.routes)


def template(path: str) -> str:
    """A Starlette path as an OpenAPI path template: `{id:uuid}` is `{id}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def app_operations(settings: Settings) -> set[tuple[str, str]]:
    operations = set()
    for route in create_app(settings).routes:
        # A Mount or a WebSocket route would need walking or describing of its own.
        assert isinstance(route, Route), f"{route!r} is not a plain Route"
        methods = {m.lower() for m in route.methods or ()}
        if "get" in methods:
            methods.discard("head")  # Starlette adds HEAD to every GET route by itself
        operations |= {(template(route.path), method) for method in methods}
    return operations


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_every_route_is_documented_and_every_documented_operation_is_a_route(
    settings: Settings,
) -> None:
    routes, documented = app_operations(settings), documented_operations(load_document())
    assert routes - documented == set(), "routes the document does not describe"
    assert documented - routes == set(), "documented operations the app does not have"
    assert ("/v1/chat/{id}/stream", "get") in routes  # the walk sees the real routes


def test_every_path_parameter_is_declared_where_its_operations_can_see_it() -> None:
    for path, item in load_document()["paths"].items():
        in_template = set(re.findall(r"\{(\w+)\}", path))
        for method in METHODS & set(item):
            parameters = [*item.get("parameters", []), *item[method].get("parameters", [])]
            declared = {p["name"] for p in parameters if p["in"] == "path"}
            assert declared == in_template, (path, method)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = load_document()
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)
    broken = json.loads(json.dumps(document))
    del broken["paths"]["/v1/usage"]["get"]["responses"]["200"]["description"]
    with pytest.raises(OpenAPIValidationError):  # the validator does look inside
        validate(broken, cls=OpenAPIV31SpecValidator)


def test_a_route_without_an_operation_cannot_be_documented() -> None:
    async def undocumented(_request: Any) -> None: ...

    with pytest.raises(LookupError, match="GET /v1/secret has no Operation"):
        build_document([Route("/v1/secret", undocumented, methods=["GET"])])


def test_the_request_and_response_schemas_are_the_models_the_routes_use() -> None:
    schemas = load_document()["components"]["schemas"]
    chat = load_document()["paths"]["/v1/chat"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatRequest"
    }
    # A constraint of the model is the document's: the same bounds the route enforces.
    max_tokens = schemas["ChatRequest"]["properties"]["max_tokens"]["anyOf"][0]
    assert (max_tokens["minimum"], max_tokens["maximum"]) == (1, 1_000_000)
    assert schemas["ChatRequest"]["additionalProperties"] is False


def test_get_openapi_json_serves_the_generated_document(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"
    assert response.json() == load_document()


# -- real requests against the documented responses ---------------------------------------


@dataclass
class Call:
    """One real request, the operation it is an example of, and the status it must get."""

    method: str
    template: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    content: bytes | None = None


class Checker:
    """Makes calls and checks each answer against the operation's documented response."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.document = load_document()
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)
        self.exercised: set[tuple[str, str]] = set()
        self.problems: list[str] = []

    def validator(self, pointer: str) -> OAS31Validator:
        return OAS31Validator(
            {"$ref": f"{DOC_URI}#{pointer}"},
            registry=self.registry,
            format_checker=OAS31Validator.FORMAT_CHECKER,
        )

    def call(self, call: Call) -> httpx.Response:
        response = self.http.request(
            call.method,
            call.path,
            headers=call.headers,
            json=call.body if call.content is None else None,
            content=call.content,
        )
        where = f"{call.method} {call.path} -> {response.status_code}"
        if response.status_code != call.status:
            self.problems.append(f"{where}: expected {call.status}: {response.text[:200]}")
            return response
        operation = self.document["paths"][call.template][call.method.lower()]
        self.exercised.add((call.template, call.method.lower()))
        documented = operation["responses"].get(str(response.status_code))
        if documented is None:
            self.problems.append(f"{where}: status not documented")
            return response
        media_type = response.headers["content-type"].split(";")[0].strip()
        if media_type not in documented["content"] and "*/*" not in documented["content"]:
            self.problems.append(f"{where}: {media_type} not documented")
            return response
        for name in documented.get("headers", {}):
            if name not in response.headers:
                self.problems.append(f"{where}: documented header {name} missing")
        if media_type == "application/json":
            pointer = "/".join(
                [
                    "/paths",
                    call.template.replace("~", "~0").replace("/", "~1"),
                    call.method.lower(),
                    "responses",
                    str(response.status_code),
                    "content",
                    "application~1json",
                    "schema",
                ]
            )
            for error in self.validator(pointer).iter_errors(response.json()):
                self.problems.append(f"{where}: {error.message} at {list(error.absolute_path)}")
        return response

    def check_events(self, response: httpx.Response, call: Call) -> list[str]:
        """The names of the stream's events, each payload checked against its schema."""
        operation = self.document["paths"][call.template]["get"]
        events = operation["responses"]["200"]["content"]["text/event-stream"]["x-events"]
        names = []
        for block in response.text.split("\n\n"):
            fields = dict(
                line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
            )
            if "event" not in fields:
                continue
            names.append(fields["event"])
            if fields["event"] not in events:
                self.problems.append(f"SSE event {fields['event']!r} not documented")
                continue
            pointer = events[fields["event"]]["$ref"].removeprefix("#")
            for error in self.validator(pointer).iter_errors(json.loads(fields["data"])):
                self.problems.append(f"SSE {fields['event']}: {error.message}")
        return names


def run(coroutine: Callable[[aioredis.Redis], Any], redis_url: str) -> Any:
    async def go() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await coroutine(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def finished_chat(settings: Settings, user_id: str) -> str:
    """A chat whose Redis stream holds a delta and its done event, with no worker behind it."""
    job_id = str(uuid.uuid4())

    async def write(r: aioredis.Redis) -> None:
        now = datetime.now(UTC).isoformat()
        record = streams.JobRecord(user_id, "gpt-4o-mini", streams.QUEUED, now)
        await streams.write_job_record(r, job_id, record, 60)
        await streams.publish(r, job_id, "delta", {"content": "Hello"})
        done = {
            "status": "ok",
            "finish_reason": "stop",
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "cost_microcents": 105,
        }
        await streams.finish(r, job_id, "done", done, "ok", 60)

    run(write, settings.redis_url)
    return job_id


def test_real_answers_match_the_documented_responses_of_every_operation(
    http: httpx.Client,
    settings: Settings,
    broker: WakingRedisBroker,
    db: psycopg.Connection[dict[str, Any]],
    user_id: str,
) -> None:
    checker = Checker(http)
    user = {"Authorization": f"Bearer {settings.api_keys[0]}", "X-User-Id": user_id}
    service = {"Authorization": f"Bearer {settings.api_keys[0]}"}
    stranger = str(uuid.uuid4())
    chat, stream = "/v1/chat/{id}", "/v1/chat/{id}/stream"
    admin = "/v1/admin/users/{user_id}/profile"
    event = {"type": "session.created", "data": {"id": "sess_1"}}
    body, signed = signed_request(settings.clerk_webhook_secret or "", event, "msg_openapi")
    forged = {**signed, "svix-signature": "v1,AAAA"}
    oversized = b'{"prompt": "' + b"x" * settings.max_chat_bytes + b'"}'

    calls = [
        Call("GET", "/healthz", "/healthz", 200),
        Call("GET", "/readyz", "/readyz", 200),
        Call("GET", "/metrics", "/metrics", 200, service),
        Call("GET", "/metrics", "/metrics", 401),
        Call("GET", "/openapi.json", "/openapi.json", 200),
        Call("GET", "/docs", "/docs", 200),
        Call("GET", "/docs/assets/{name}", "/docs/assets/swagger-ui-bundle.js", 200),
        Call("GET", "/docs/assets/{name}", "/docs/assets/index.html", 404),
        Call("POST", "/webhooks/clerk", "/webhooks/clerk", 200, signed, content=body),
        Call("POST", "/webhooks/clerk", "/webhooks/clerk", 400, body={}),
        Call("POST", "/webhooks/clerk", "/webhooks/clerk", 400, forged, content=body),
        Call("POST", "/v1/chat", "/v1/chat", 401, body={"prompt": "hi"}),
        Call("POST", "/v1/chat", "/v1/chat", 400, user, {"prompt": ""}),
        Call("POST", "/v1/chat", "/v1/chat", 400, user, {"prompt": "hi", "model": "no-such"}),
        Call("POST", "/v1/chat", "/v1/chat", 413, user, content=oversized),
        Call("GET", chat, f"/v1/chat/{stranger}", 404, user),
        Call("DELETE", chat, f"/v1/chat/{stranger}", 404, user),
        Call("GET", stream, f"/v1/chat/{stranger}/stream", 404, user),
        Call("GET", stream, f"/v1/chat/{stranger}/stream", 401),
        Call("GET", "/v1/chats", "/v1/chats", 200, user),
        Call("GET", "/v1/chats", "/v1/chats?limit=0", 400, user),
        Call("GET", "/v1/chats", "/v1/chats?before=not-a-cursor", 400, user),
        Call("GET", "/v1/usage", "/v1/usage", 401),
        Call("GET", "/v1/usage", "/v1/usage", 401, service),
        Call("GET", "/v1/usage", "/v1/usage", 200, user),
        Call("GET", "/v1/models", "/v1/models", 200, user),
        Call("POST", "/v1/chat/completions", "/v1/chat/completions", 400, user, {"messages": []}),
        Call("POST", "/v1/chat/completions", "/v1/chat/completions", 401, body={"messages": []}),
        Call("PUT", admin, f"/v1/admin/users/{user_id}/profile", 401, body={}),
        Call("PUT", admin, f"/v1/admin/users/{user_id}/profile", 400, service, {}),
        Call("PUT", admin, "/v1/admin/users/no%20spaces/profile", 400, service, {}),
        Call(
            "PUT",
            admin,
            f"/v1/admin/users/{user_id}/profile",
            400,
            service,
            {"default_model": "no-such"},
        ),
    ]
    for call in calls:
        checker.call(call)

    created = checker.call(Call("POST", "/v1/chat", "/v1/chat", 202, user, {"prompt": "hi"}))
    queued = created.json()["id"] if created.status_code == 202 else stranger
    checker.call(Call("GET", chat, f"/v1/chat/{queued}", 200, user))
    checker.call(
        Call("GET", stream, f"/v1/chat/{queued}/stream", 400, {**user, "Last-Event-ID": "x"})
    )
    checker.call(Call("DELETE", chat, f"/v1/chat/{queued}", 202, user))

    finished = finished_chat(settings, user_id)
    call = Call("GET", stream, f"/v1/chat/{finished}/stream", 200, user)
    assert checker.check_events(checker.call(call), call) == ["delta", "done"]
    checker.call(Call("DELETE", chat, f"/v1/chat/{finished}", 409, user))

    # Budget: a cap of 1 token, already used.
    profile = f"/v1/admin/users/{user_id}/profile"
    checker.call(Call("PUT", admin, profile, 200, service, {"monthly_token_budget": 1}))
    db.execute(
        "INSERT INTO token_usage (user_id, model, prompt_tokens) VALUES (%(u)s, 'gpt-4o-mini', 1)",
        {"u": user_id},
    )
    checker.call(Call("POST", "/v1/chat", "/v1/chat", 402, user, {"prompt": "hi"}))

    # A deleted user: 403 on user routes, 410 on the admin route.
    db.execute(
        "INSERT INTO user_tombstones (user_id, deleted_at) VALUES (%(u)s, now())", {"u": user_id}
    )
    checker.call(Call("GET", "/v1/usage", "/v1/usage", 403, user))
    checker.call(Call("PUT", admin, profile, 410, service, {"monthly_token_budget": 5}))
    broker.flush_all()  # the chat queued above has no worker to run it

    assert checker.problems == []
    assert checker.exercised == documented_operations(checker.document)


def test_the_docs_page_loads_its_assets_from_here_not_from_a_cdn(http: httpx.Client) -> None:
    page = http.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
    for source in sources:
        asset = http.get(source)
        assert asset.status_code == 200 and len(asset.content) > 100, source
    assert 'url: "/openapi.json"' in page.text
    bundle = http.get("/docs/assets/swagger-ui-bundle.js").text
    versions = re.findall(r'"(\d+\.\d+\.\d+)"', bundle)
    assert any(v.startswith("5.") for v in versions)  # Swagger UI 5 reads OpenAPI 3.1
