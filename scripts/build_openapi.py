#!/usr/bin/env python3
"""Write ingest/openapi.json, the OpenAPI 3.1 description of the ingest app.

Run `python scripts/build_openapi.py` after changing a route, then commit both files.
tests/test_openapi.py checks the document against the app's real routes, the statuses
real requests get, and this script's output, so none of the three can drift.

Every error is `{"error": {"code", "message"}}`; each operation lists, per status, the
exact codes the route can answer with (read from its ApiError raises).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "ingest" / "openapi.json"

Json = dict[str, Any]


def ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def nullable(schema: Json) -> Json:
    return {**schema, "type": [schema["type"], "null"]}


# -- responses ----------------------------------------------------------------------------

ERROR_HEADERS = {
    401: {"WWW-Authenticate": ref("headers", "WWWAuthenticate")},
    503: {"Retry-After": ref("headers", "RetryAfter")},
}


def with_request_id(response: Json) -> Json:
    headers = {"X-Request-Id": ref("headers", "XRequestId"), **response.get("headers", {})}
    return {**response, "headers": headers}


def json_response(description: str, schema: Json, headers: Json | None = None) -> Json:
    response: Json = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return with_request_id(response)


def error(status: int, description: str, *codes: str) -> tuple[str, Json]:
    """The response for one error status, its `error.code` limited to `codes`."""
    schema = {
        "allOf": [
            ref("schemas", "Error"),
            {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
        ]
    }
    return str(status), json_response(description, schema, ERROR_HEADERS.get(status))


def responses(success: tuple[str, Json], *errors: tuple[str, Json]) -> Json:
    return dict([success, *errors])


# Errors several routes share.
UNAUTHENTICATED = error(
    401,
    "No credentials, or credentials that prove nothing: a bad or expired session token, an "
    "unknown key, a malformed X-User-Id, or a service key without X-User-Id.",
    "unauthenticated",
)
USER_DELETED = error(403, "The user was deleted in Clerk.", "user_deleted")
AUTH_MISCONFIGURED = error(
    500, "CLERK_JWT_KEY on this server is not an RSA public key.", "auth_misconfigured"
)
NO_CHAT = error(
    404,
    "No chat with this id for this caller: none, not a UUID, or someone else's (they look "
    "the same).",
    "not_found",
)
DATABASE_DOWN = error(503, "Postgres is unavailable; retry.", "database_unavailable")
STORES_DOWN = error(
    503, "Postgres or Redis is unavailable; retry.", "database_unavailable", "redis_unavailable"
)
REQUEST_TOO_LARGE = error(
    413, "The body is over AIWRAP_MAX_CHAT_BYTES (default 1 MiB).", "request_too_large"
)

USER_AUTH: list[Json] = [{"clerkSession": []}, {"serviceKey": [], "userId": []}]

#: What a short answer looks like on the wire.
SSE_EXAMPLE = (
    "retry: 1000\n\n"
    'id: 1718000000000-0\nevent: delta\ndata: {"content":"Hel"}\n\n'
    'id: 1718000000000-1\nevent: delta\ndata: {"content":"lo"}\n\n'
    "id: 1718000000001-0\nevent: done\n"
    'data: {"status":"ok","finish_reason":"stop","prompt_tokens":9,"completion_tokens":2,'
    '"cost_microcents":255}\n\n'
)

CHAT_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The chat's id (a UUID, as POST /v1/chat answered).",
    "schema": {"type": "string", "format": "uuid"},
}


# -- operations ---------------------------------------------------------------------------


def health_paths() -> Json:
    readiness = json_response("Redis and Postgres both answered.", ref("schemas", "Readiness"))
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "tags": ["operations"],
                "summary": "The process is alive",
                "security": [],
                "responses": {
                    "200": json_response(
                        "Always, while the process runs.", ref("schemas", "Health")
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "tags": ["operations"],
                "summary": "Redis and Postgres are reachable",
                "description": "Each probe may take 2 s. The body names what failed.",
                "security": [],
                "responses": {
                    "200": readiness,
                    "503": json_response(
                        "Redis or Postgres did not answer; `checks` says which and why.",
                        ref("schemas", "Readiness"),
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics of this ingest process",
                "description": "Requests by route and status, latency, webhook verification "
                "failures, and the depth of each queue (omitted while Redis is away).",
                "security": [],
                "responses": {
                    "200": with_request_id(
                        {
                            "description": "The Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    )
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["operations"],
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": json_response("The OpenAPI 3.1 description.", {"type": "object"})
                },
            }
        },
    }


def webhook_paths() -> Json:
    svix_header = [
        {
            "name": name,
            "in": "header",
            "required": True,
            "description": description,
            "schema": {"type": "string"},
        }
        for name, description in (
            ("svix-id", "The delivery's id; a redelivery has the same one."),
            ("svix-timestamp", "Unix seconds; more than 5 minutes off is refused."),
            ("svix-signature", "Space-separated `v1,<base64>` signatures."),
        )
    ]
    return {
        "/webhooks/clerk": {
            "post": {
                "operationId": "receiveClerkWebhook",
                "tags": ["webhooks"],
                "summary": "Receive a Clerk user event",
                "description": "Verifies the Svix signature with CLERK_WEBHOOK_SECRET and queues "
                "the event for the identity worker; no database work happens here. "
                "`user.created`, `user.updated` and `user.deleted` are queued, other types "
                "acknowledged and ignored. A 503 makes Svix deliver again later.",
                "security": [],
                "parameters": svix_header,
                "requestBody": {
                    "required": True,
                    "description": "Clerk's event, exactly as signed (at most 1 MiB).",
                    "content": {"application/json": {"schema": ref("schemas", "ClerkEvent")}},
                },
                "responses": responses(
                    (
                        "200",
                        json_response(
                            "The event is on the identity queue, or of a type aiwrap ignores.",
                            ref("schemas", "WebhookAccepted"),
                        ),
                    ),
                    error(
                        400,
                        "The request can never be accepted as sent: Svix headers missing or "
                        "malformed, a bad signature, a timestamp out of tolerance, or a body "
                        "that is not a Clerk event.",
                        "missing_svix_headers",
                        "malformed_svix_headers",
                        "bad_signature",
                        "stale_timestamp",
                        "future_timestamp",
                        "invalid_body",
                        "invalid_json",
                        "not_a_clerk_event",
                    ),
                    error(413, "The body is over 1 MiB.", "body_too_large"),
                    error(
                        500,
                        "CLERK_WEBHOOK_SECRET is missing or not a `whsec_` secret.",
                        "webhook_secret_missing",
                        "webhook_secret_invalid",
                    ),
                    error(503, "Redis did not take the event; retry.", "queue_unavailable"),
                ),
            }
        }
    }


def chat_paths() -> Json:
    return {
        "/v1/chat": {
            "post": {
                "operationId": "createChat",
                "tags": ["chat"],
                "summary": "Start a chat",
                "description": "Queues the chat for a worker and answers at once; read the answer "
                "from `stream_url` as it is generated. `model` defaults to the user's "
                "default model.",
                "security": USER_AUTH,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("schemas", "ChatRequest")}},
                },
                "responses": responses(
                    (
                        "202",
                        json_response(
                            "Queued.",
                            ref("schemas", "ChatAccepted"),
                            {"Location": ref("headers", "Location")},
                        ),
                    ),
                    error(
                        400,
                        "Invalid input (the message names the field and why), a body that "
                        "is not a JSON object, or a model aiwrap has no price for.",
                        "invalid_request",
                        "invalid_json",
                        "unknown_model",
                    ),
                    UNAUTHENTICATED,
                    error(
                        402,
                        "The user's monthly token budget is used up.",
                        "budget_exceeded",
                    ),
                    USER_DELETED,
                    REQUEST_TOO_LARGE,
                    AUTH_MISCONFIGURED,
                    error(
                        503,
                        "Postgres, Redis or the queue is unavailable; nothing was accepted.",
                        "database_unavailable",
                        "redis_unavailable",
                        "queue_unavailable",
                    ),
                ),
            }
        },
        "/v1/chat/{id}": {
            "parameters": [CHAT_ID],
            "get": {
                "operationId": "getChat",
                "tags": ["chat"],
                "summary": "A chat as recorded",
                "security": USER_AUTH,
                "responses": responses(
                    ("200", json_response("The exchange.", ref("schemas", "Exchange"))),
                    UNAUTHENTICATED,
                    USER_DELETED,
                    NO_CHAT,
                    AUTH_MISCONFIGURED,
                    STORES_DOWN,
                ),
            },
            "delete": {
                "operationId": "cancelChat",
                "tags": ["chat"],
                "summary": "Cancel a chat",
                "description": "The worker stops reading the model promptly; the partial "
                "exchange is logged and metered, and its stream ends with an `error` event "
                "with code `cancelled`.",
                "security": USER_AUTH,
                "responses": responses(
                    (
                        "202",
                        json_response("Cancellation requested.", ref("schemas", "CancelAccepted")),
                    ),
                    UNAUTHENTICATED,
                    USER_DELETED,
                    NO_CHAT,
                    error(409, "The chat already finished.", "already_finished"),
                    AUTH_MISCONFIGURED,
                    STORES_DOWN,
                ),
            },
        },
        "/v1/chat/{id}/stream": {
            "parameters": [CHAT_ID],
            "get": {
                "operationId": "streamChat",
                "tags": ["chat"],
                "summary": "A chat's answer as Server-Sent Events",
                "description": "Works with the browser's EventSource, which sends Clerk's "
                "`__session` cookie (this route alone accepts it, being a read). Every event "
                "has an `id:`; reconnecting with `Last-Event-ID` resumes with no gap and no "
                "repeat, and a client that connects after the chat finished gets the whole "
                "answer.",
                "security": [*USER_AUTH, {"sessionCookie": []}],
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "The id of the last event received; the stream resumes "
                        "after it.",
                        "schema": ref("schemas", "EventId"),
                    },
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "required": False,
                        "description": "The same, for clients that cannot set headers "
                        "(the header wins).",
                        "schema": ref("schemas", "EventId"),
                    },
                ],
                "responses": responses(
                    (
                        "200",
                        with_request_id(
                            {
                                "description": "The stream starts with `retry: 1000`, then "
                                "carries `event: delta` for each piece of text and ends with "
                                "exactly one `event: done` or `event: error`. Each event's "
                                "`data:` is one line of JSON (see `x-events`). Comment lines "
                                "(`: keepalive`) keep an idle connection open. An `error` "
                                "without an `id:` (`stream_unavailable`) means the stream "
                                "broke: reconnect to resume.",
                                "headers": {
                                    "Cache-Control": {
                                        "schema": {
                                            "type": "string",
                                            "const": "no-cache, no-transform",
                                        }
                                    }
                                },
                                "content": {
                                    "text/event-stream": {
                                        "schema": {"type": "string"},
                                        "x-events": {
                                            "delta": ref("schemas", "SseDelta"),
                                            "done": ref("schemas", "SseDone"),
                                            "error": ref("schemas", "SseError"),
                                        },
                                        "example": SSE_EXAMPLE,
                                    }
                                },
                            }
                        ),
                    ),
                    error(400, "Last-Event-ID is not an event id.", "invalid_request"),
                    UNAUTHENTICATED,
                    USER_DELETED,
                    NO_CHAT,
                    AUTH_MISCONFIGURED,
                    STORES_DOWN,
                ),
            },
        },
    }


def history_paths() -> Json:
    return {
        "/v1/chats": {
            "get": {
                "operationId": "listChats",
                "tags": ["history"],
                "summary": "The caller's chats, newest first",
                "description": "Pass `next_before` back as `before` for the next page: no "
                "overlap and no gap, even when chats share a timestamp.",
                "security": USER_AUTH,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "description": "A `next_before` this server issued.",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": responses(
                    ("200", json_response("One page.", ref("schemas", "ChatPage"))),
                    error(400, "`limit` or `before` is invalid.", "invalid_request"),
                    UNAUTHENTICATED,
                    USER_DELETED,
                    AUTH_MISCONFIGURED,
                    DATABASE_DOWN,
                ),
            }
        },
        "/v1/usage": {
            "get": {
                "operationId": "usage",
                "tags": ["history"],
                "summary": "The caller's usage this calendar month (UTC)",
                "security": USER_AUTH,
                "responses": responses(
                    ("200", json_response("This month's usage.", ref("schemas", "Usage"))),
                    UNAUTHENTICATED,
                    USER_DELETED,
                    AUTH_MISCONFIGURED,
                    DATABASE_DOWN,
                ),
            }
        },
    }


def admin_paths() -> Json:
    return {
        "/v1/admin/users/{user_id}/profile": {
            "put": {
                "operationId": "putProfile",
                "tags": ["admin"],
                "summary": "Set a user's monthly token budget and default model",
                "description": "Service keys only; no X-User-Id needed. A user aiwrap has not "
                "seen yet is provisioned first.",
                "security": [{"serviceKey": []}],
                "parameters": [
                    {
                        "name": "user_id",
                        "in": "path",
                        "required": True,
                        "description": "A Clerk user id.",
                        "schema": ref("schemas", "UserId"),
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("schemas", "ProfileUpdate")}},
                },
                "responses": responses(
                    ("200", json_response("The profile as now set.", ref("schemas", "Profile"))),
                    error(
                        400,
                        "Invalid input, a body that is not a JSON object, or a default "
                        "model aiwrap has no price for.",
                        "invalid_request",
                        "invalid_json",
                        "unknown_model",
                    ),
                    UNAUTHENTICATED,
                    error(403, "A session token, not a service key.", "service_key_required"),
                    error(
                        410, "The user was deleted in Clerk; nothing was written.", "user_deleted"
                    ),
                    REQUEST_TOO_LARGE,
                    AUTH_MISCONFIGURED,
                    DATABASE_DOWN,
                ),
            }
        }
    }


# -- components ---------------------------------------------------------------------------

INT = {"type": "integer", "minimum": 0}


def exchange(*, with_metadata: bool) -> Json:
    properties: Json = {
        "id": {"type": "string", "format": "uuid"},
        "created_at": {"type": "string", "format": "date-time"},
        "model": {"type": "string"},
        "prompt": nullable({"type": "string", "description": "Null while queued."}),
        "completion": nullable({"type": "string", "description": "Null until finished."}),
        "status": {"enum": ["queued", "running", "ok", "error", "filtered"]},
        "prompt_tokens": INT,
        "completion_tokens": INT,
        "cost_microcents": {**INT, "description": "Millionths of a cent; 0 until metered."},
        "latency_ms": nullable({"type": "integer"}),
        "finish_reason": nullable({"type": "string"}),
    }
    if with_metadata:
        properties["metadata"] = nullable(
            {
                "type": "object",
                "description": "What the worker recorded: finish_reason, ttft_ms, the request "
                "parameters, `usage_estimated`, and `error` {code, message} when it failed.",
            }
        )
    return {
        "type": "object",
        "required": list(properties),
        "properties": properties,
    }


def schemas() -> Json:
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "description": "Stable; branch on it."},
                        "message": {"type": "string", "description": "For people."},
                    },
                }
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"enum": ["ready", "unavailable"]},
                "checks": {
                    "type": "object",
                    "required": ["redis", "postgres"],
                    "description": "`ok`, or the error that probe met.",
                    "properties": {
                        "redis": {"type": "string"},
                        "postgres": {"type": "string"},
                    },
                },
            },
        },
        "ClerkEvent": {
            "type": "object",
            "required": ["type", "data"],
            "description": "Clerk's event envelope; other fields pass through.",
            "properties": {
                "type": {"type": "string", "examples": ["user.created"]},
                "data": {"type": "object"},
            },
        },
        "WebhookAccepted": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["status", "svix_id"],
                    "properties": {"status": {"const": "queued"}, "svix_id": {"type": "string"}},
                },
                {
                    "type": "object",
                    "required": ["status", "type"],
                    "properties": {"status": {"const": "ignored"}, "type": {"type": "string"}},
                },
            ]
        },
        "ChatMessage": {
            "type": "object",
            "required": ["role", "content"],
            "additionalProperties": False,
            "properties": {
                "role": {"enum": ["system", "developer", "user", "assistant"]},
                "content": {"type": "string"},
            },
        },
        "ChatRequest": {
            "type": "object",
            "description": "`messages`, or the shorthand `prompt` (one user message); not both. "
            "At least one message must have non-blank content.",
            "additionalProperties": False,
            "oneOf": [{"required": ["messages"]}, {"required": ["prompt"]}],
            "properties": {
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": ref("schemas", "ChatMessage"),
                },
                "prompt": {"type": "string", "minLength": 1},
                "model": nullable(
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 200,
                        "description": "A priced model; defaults to the user's default model.",
                    }
                ),
                "max_tokens": nullable({"type": "integer", "minimum": 1, "maximum": 1000000}),
                "temperature": nullable({"type": "number", "minimum": 0, "maximum": 2}),
            },
        },
        "ChatAccepted": {
            "type": "object",
            "required": ["id", "status", "url", "stream_url"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "status": {"const": "queued"},
                "url": {"type": "string", "description": "Path of GET /v1/chat/{id}."},
                "stream_url": {"type": "string", "description": "Path of the SSE stream."},
            },
        },
        "CancelAccepted": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "status": {"const": "cancelling"},
            },
        },
        "Exchange": exchange(with_metadata=True),
        "ExchangeSummary": exchange(with_metadata=False),
        "ChatPage": {
            "type": "object",
            "required": ["items", "next_before"],
            "properties": {
                "items": {"type": "array", "items": ref("schemas", "ExchangeSummary")},
                "next_before": nullable(
                    {"type": "string", "description": "The next page's cursor; null on the last."}
                ),
            },
        },
        "Usage": {
            "type": "object",
            "required": [
                "month",
                "tokens_used",
                "monthly_token_budget",
                "remaining",
                "cost_microcents",
                "by_model",
            ],
            "properties": {
                "month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                "tokens_used": INT,
                "monthly_token_budget": {**INT, "description": "0 means no cap."},
                "remaining": nullable({**INT, "description": "Null when there is no cap."}),
                "cost_microcents": INT,
                "by_model": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["model", "tokens", "cost_microcents"],
                        "properties": {
                            "model": {"type": "string"},
                            "tokens": INT,
                            "cost_microcents": INT,
                        },
                    },
                },
            },
        },
        "UserId": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
        "ProfileUpdate": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "monthly_token_budget": nullable(
                    {**INT, "maximum": 2**63 - 1, "description": "0 means no cap."}
                ),
                "default_model": nullable({"type": "string", "minLength": 1}),
            },
        },
        "Profile": {
            "type": "object",
            "required": ["user_id", "monthly_token_budget", "default_model"],
            "properties": {
                "user_id": ref("schemas", "UserId"),
                "monthly_token_budget": INT,
                "default_model": {"type": "string"},
            },
        },
        "EventId": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
        "SseDelta": {
            "type": "object",
            "description": "`event: delta`: the next piece of the answer's text.",
            "required": ["content"],
            "properties": {"content": {"type": "string"}},
        },
        "SseDone": {
            "type": "object",
            "description": "`event: done`: the chat finished; the last event.",
            "required": [
                "status",
                "finish_reason",
                "prompt_tokens",
                "completion_tokens",
                "cost_microcents",
            ],
            "properties": {
                "status": {"enum": ["ok", "filtered"]},
                "finish_reason": nullable({"type": "string"}),
                "prompt_tokens": INT,
                "completion_tokens": INT,
                "cost_microcents": INT,
            },
        },
        "SseError": {
            "type": "object",
            "description": "`event: error`: the chat failed or the stream cannot go on; the "
            "last event. Codes include `budget_exceeded`, `cancelled`, `user_deleted`, "
            "`model_not_priced`, `upstream_incomplete` and other upstream failures from the "
            "worker, and `stream_expired` or `stream_unavailable` from this server.",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    }


def document() -> Json:
    """The whole OpenAPI document."""
    paths = {
        **health_paths(),
        **webhook_paths(),
        **chat_paths(),
        **history_paths(),
        **admin_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aiwrap ingest",
            "version": "0.1.0",
            "summary": "Clerk identity sync, streamed chat, exact metering and budgets.",
            "description": 'Errors are `{"error": {"code", "message"}}`, with the codes '
            "each operation lists. Unknown paths are 404 `not_found`, a method a path does "
            "not take is 405 `method_not_allowed`, and every GET also answers HEAD. Every "
            "response carries `X-Request-Id` (the request's own, if it sent one).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "chat", "description": "Chats and their streams."},
            {"name": "history", "description": "Past chats and usage."},
            {"name": "admin", "description": "Service-key routes."},
            {"name": "webhooks", "description": "Clerk, through Svix."},
            {"name": "operations", "description": "Health, readiness, metrics."},
        ],
        "security": USER_AUTH,
        "paths": paths,
        "components": {
            "securitySchemes": {
                "clerkSession": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A Clerk session JWT, verified offline against CLERK_JWT_KEY: "
                    "RS256 only, exp/nbf with 5 s of leeway, azp one of "
                    "CLERK_AUTHORIZED_PARTIES when set. The user is its `sub`.",
                },
                "serviceKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of AIWRAP_API_KEYS, for a trusted backend. On user "
                    "routes it must be sent with `X-User-Id` (userId).",
                },
                "userId": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-User-Id",
                    "description": "The Clerk user a service key acts for.",
                },
                "sessionCookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "__session",
                    "description": "Clerk's session cookie (the same JWT), for EventSource; "
                    "the SSE route only.",
                },
            },
            "headers": {
                "XRequestId": {
                    "description": "The request's X-Request-Id (up to 64 characters), or a "
                    "new one; it is in every log line of the request.",
                    "schema": {"type": "string"},
                },
                "WWWAuthenticate": {"schema": {"type": "string", "const": "Bearer"}},
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "string"},
                },
                "Location": {
                    "description": "The chat's path.",
                    "schema": {"type": "string"},
                },
            },
            "schemas": schemas(),
        },
    }


def render() -> str:
    """The document as ingest/openapi.json holds it."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    check = "--check" in sys.argv[1:]
    text = render()
    if check:
        if OUTPUT.read_text() != text:
            sys.exit(f"{OUTPUT} is out of date: run python scripts/build_openapi.py")
    else:
        OUTPUT.write_text(text)
