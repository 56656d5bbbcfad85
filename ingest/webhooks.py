"""POST /webhooks/clerk: verify Clerk's Svix signature and queue the event.

No database work happens here: the route answers 200 once the event is on the
identity queue, and the identity actor applies it. A 503 (Redis down) makes
Svix deliver the event again later, so nothing is lost.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send
from svix.webhooks import Webhook, WebhookVerificationError

from workers.broker import IDENTITY_QUEUE
from workers.identity import ACTOR_NAME, HANDLED_TYPES
from workers.logs import get_logger

from .errors import ApiError
from .metrics import WEBHOOK_VERIFICATION_FAILURES
from .requests import read_body
from .state import IngestState

log = get_logger(__name__)

#: Larger bodies get a 413 before they are read in full. (Starlette's own
#: `Route(max_body_size=...)` answers its 413 in plain text, not aiwrap's JSON.)
MAX_BODY_BYTES = 1_048_576
SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")
_WANTED_HEADERS = {name.encode(): name for name in (*SVIX_HEADERS, "content-length")}


class BadWebhook(ApiError):
    """A webhook request that can never be accepted as sent: a 400."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(400, code, message)


@functools.lru_cache(maxsize=4)
def _verifier(secret: str) -> Webhook:
    return Webhook(secret)


def verify(secret: str, body: bytes, headers: dict[str, str]) -> str:
    """Check the Svix signature and timestamp; return the body as text or raise BadWebhook."""
    missing = [name for name in SVIX_HEADERS if not headers.get(name)]
    if missing:
        raise BadWebhook("missing_svix_headers", f"Missing Svix header(s): {', '.join(missing)}.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadWebhook("invalid_body", "The body is not UTF-8 text.") from None
    try:
        verifier = _verifier(secret)
    except ValueError as error:
        log.error(
            "clerk_webhook_secret_invalid",
            error=type(error).__name__,
            detail="CLERK_WEBHOOK_SECRET is not a valid whsec_ base64 secret.",
        )
        raise ApiError(
            500, "webhook_secret_invalid", "The webhook secret on this server is not valid."
        ) from None
    try:
        verifier.verify(text, headers)
    except WebhookVerificationError as error:
        raise BadWebhook(*_verification_failure(str(error))) from None
    except ValueError:
        # svix unpacks `v1,<base64>` without checking its shape first.
        raise BadWebhook(
            "malformed_svix_headers",
            "The svix-signature header is not a list of `v1,<base64>` signatures.",
        ) from None
    return text


def _verification_failure(reason: str) -> tuple[str, str]:
    if "too old" in reason:
        return "stale_timestamp", "The svix-timestamp is more than 5 minutes in the past."
    if "too new" in reason:
        return "future_timestamp", "The svix-timestamp is more than 5 minutes in the future."
    if "No matching signature" in reason:
        return "bad_signature", "No signature in svix-signature matches the body and secret."
    return "malformed_svix_headers", "The svix-timestamp header is not a Unix time."


def webhook_headers(scope: Scope) -> dict[str, str]:
    """The Svix headers and content-length, "" when missing."""
    # Reversed, so that a repeated header's first value wins, as with Headers.get().
    raw = dict(reversed(scope["headers"]))
    return {name: raw.get(key, b"").decode("latin-1") for key, name in _WANTED_HEADERS.items()}


def _too_large() -> ApiError:
    return ApiError(413, "body_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes.")


def parse_event(text: str) -> dict[str, Any]:
    """The body as a Clerk event envelope, or BadWebhook."""
    try:
        # Strict JSON (no NaN, no lone surrogates, nesting bounded), so that what
        # is queued always encodes back to JSON the worker reads.
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadWebhook("invalid_json", "The body is not JSON.") from None
    if not (
        isinstance(event, dict)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("data"), dict)
    ):
        raise BadWebhook(
            "not_a_clerk_event",
            'The body is not a Clerk event: expected an object with a string "type" '
            'and an object "data".',
        )
    return event


class ClerkWebhookRoute:
    """The route, as a plain ASGI app rather than a Request-to-Response function.

    It is ingest's busiest route, and the Request, the second exception wrapper and
    the JSONResponse that Starlette builds around such a function are work it does
    not need on every call. Errors are raised as ApiError all the same, and
    Starlette's exception middleware answers them.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: IngestState = scope["app"].state.aiwrap
        secret = state.settings.clerk_webhook_secret
        if not secret:
            log.error(
                "clerk_webhook_secret_missing",
                detail="CLERK_WEBHOOK_SECRET is not set: cannot verify Clerk webhooks.",
            )
            raise ApiError(
                500, "webhook_secret_missing", "This server has no webhook secret configured."
            )
        headers = webhook_headers(scope)
        body = await read_body(receive, headers["content-length"], MAX_BODY_BYTES, _too_large)
        try:
            text = verify(secret, body, headers)
        except BadWebhook as error:
            WEBHOOK_VERIFICATION_FAILURES.labels(error.code).inc()
            raise
        event_type = parse_event(text)["type"]
        svix_id = headers["svix-id"]
        if event_type not in HANDLED_TYPES:
            await _answer(send, {"status": "ignored", "type": event_type})
            return
        # The event goes on the queue as the text Clerk signed, which parse_event
        # found to be strict JSON: nothing to encode again, and no parsed copy held
        # while Redis answers.
        await state.enqueuer.send(IDENTITY_QUEUE, ACTOR_NAME, svix_id, orjson.Fragment(body))
        await _answer(send, {"status": "queued", "svix_id": svix_id})


async def _answer(send: Send, content: dict[str, str]) -> None:
    """A 200 with `content` as JSON, as JSONResponse would send it."""
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def sample_clerk_event(event_type: str, user_id: str, now_ms: int) -> dict[str, Any]:
    """A Clerk event shaped like the ones Clerk sends, for trying a deployment by hand."""
    envelope: dict[str, Any] = {
        "object": "event",
        "type": event_type,
        "timestamp": now_ms,
        "instance_id": "ins_aiwrap_sample",
        "event_attributes": {
            "http_request": {"client_ip": "127.0.0.1", "user_agent": "aiwrap send-webhook"}
        },
    }
    if event_type == "user.deleted":
        return {**envelope, "data": {"object": "user", "id": user_id, "deleted": True}}
    email_id = f"idn_{user_id.removeprefix('user_')}"
    return {
        **envelope,
        "data": {
            "object": "user",
            "id": user_id,
            "username": None,
            "first_name": "Sample",
            "last_name": "User",
            "image_url": "https://img.clerk.com/sample.png",
            "email_addresses": [
                {
                    "object": "email_address",
                    "id": email_id,
                    "email_address": f"{user_id}@example.com",
                    "verification": {"status": "verified", "strategy": "email_code"},
                    "linked_to": [],
                }
            ],
            "primary_email_address_id": email_id,
            "phone_numbers": [],
            "primary_phone_number_id": None,
            "external_accounts": [],
            "public_metadata": {},
            "private_metadata": {},
            "unsafe_metadata": {},
            "password_enabled": True,
            "two_factor_enabled": False,
            "banned": False,
            "last_sign_in_at": None,
            "created_at": now_ms,
            "updated_at": now_ms,
        },
    }


def signed_request(secret: str, event: dict[str, Any], msg_id: str) -> tuple[bytes, dict[str, str]]:
    """`event` as a body and the Svix headers that sign it with `secret`."""
    body = json.dumps(event)
    now = datetime.now(UTC)
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
    }
    return body.encode(), headers


routes: list[BaseRoute] = [Route("/webhooks/clerk", ClerkWebhookRoute(), methods=["POST"])]
