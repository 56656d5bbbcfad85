"""POST /webhooks/clerk: verify Clerk's Svix signature and queue the event.

No database work happens here: the route answers 200 once the event is on the
identity queue, and the identity actor applies it. A 503 (Redis down) makes
Svix deliver the event again later, so nothing is lost.
"""

from __future__ import annotations

import functools
from typing import Final, Literal

import msgspec
import orjson
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send
from svix.webhooks import Webhook, WebhookVerificationError

from core import decoding
from core.errors import InvalidInput
from core.jobs import HANDLED_CLERK_EVENTS, ClerkEvent
from core.logs import get_logger
from core.queues import APPLY_CLERK_EVENT, IDENTITY_QUEUE, NAMESPACE

from .bodies import WebhookIgnored, WebhookQueued
from .errors import ApiError
from .metrics import WEBHOOK_VERIFICATION_FAILURES
from .openapi import Answer, Operation, Parameter, documented, failure
from .requests import read_body
from .state import IngestState

log = get_logger(__name__)

#: Larger bodies get a 413 before they are read in full. (Starlette's own
#: `Route(max_body_size=...)` answers its 413 in plain text, not aiwrap's JSON.)
MAX_BODY_BYTES = 1_048_576
SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")
#: Seconds a delivery's svix-id is remembered at the edge: longer than the 5 minutes
#: within which Svix's signature accepts a replay of it. (The identity worker skips a
#: redelivered svix-id too; this keeps replays off the queue.)
REPLAY_WINDOW_S: Final = 600
_WANTED_HEADERS = {name.encode(): name for name in (*SVIX_HEADERS, "content-length")}


class BadWebhook(ApiError):
    """A webhook request that can never be accepted as sent: a 400."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(400, code, message)


@functools.lru_cache(maxsize=4)
def _verifier(secret: str) -> Webhook:
    return Webhook(secret)


def verify(secret: str, body: bytes, headers: dict[str, str]) -> None:
    """Check the Svix signature and timestamp, or raise BadWebhook."""
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


def _verification_failure(reason: str) -> tuple[str, str]:
    if "too old" in reason:
        return "stale_timestamp", "The svix-timestamp is more than 5 minutes in the past."
    if "too new" in reason:
        return "future_timestamp", "The svix-timestamp is more than 5 minutes in the future."
    if "No matching signature" in reason:
        return "bad_signature", "No signature in svix-signature matches the body and secret."
    return "malformed_svix_headers", "The svix-timestamp header is not a Unix time."


def delivery_key(svix_id: str) -> str:
    """The Redis key that marks a delivery as queued."""
    return f"{NAMESPACE}:clerk:delivery:{svix_id}"


def webhook_headers(scope: Scope) -> dict[str, str]:
    """The Svix headers and content-length, "" when missing."""
    # Reversed, so that a repeated header's first value wins, as with Headers.get().
    raw = dict(reversed(scope["headers"]))
    return {name: raw.get(key, b"").decode("latin-1") for key, name in _WANTED_HEADERS.items()}


def _too_large() -> ApiError:
    return ApiError(413, "body_too_large", f"The body is larger than {MAX_BODY_BYTES} bytes.")


def parse_event(body: bytes) -> ClerkEvent:
    """The body as a Clerk event envelope (the identity job's, core/jobs.py), or BadWebhook."""
    try:
        # Strict JSON, so that what is queued always encodes back to JSON the worker reads.
        return decoding.decode(ClerkEvent, body, root="event")
    except ValueError:
        raise BadWebhook("invalid_json", "The body is not JSON.") from None
    except InvalidInput:
        raise BadWebhook(
            "not_a_clerk_event",
            'The body is not a Clerk event: expected an object with a string "type" '
            'and an object "data".',
        ) from None


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
            verify(secret, body, headers)
        except BadWebhook as error:
            WEBHOOK_VERIFICATION_FAILURES.labels(error.code).inc()
            raise
        event_type = parse_event(body).type
        svix_id = headers["svix-id"]
        if event_type not in HANDLED_CLERK_EVENTS:
            await _answer(send, WebhookIgnored(status="ignored", type=event_type))
            return
        # The event goes on the queue as the text Clerk signed, which parse_event
        # found to be strict JSON: nothing to encode again, and no parsed copy held
        # while Redis answers.
        queued = await state.enqueuer.send(
            IDENTITY_QUEUE,
            APPLY_CLERK_EVENT,
            svix_id,
            orjson.Fragment(body),
            once=(delivery_key(svix_id), REPLAY_WINDOW_S),
        )
        status: Literal["queued", "duplicate"] = "queued" if queued else "duplicate"
        await _answer(send, WebhookQueued(status=status, svix_id=svix_id))


async def _answer(send: Send, content: WebhookQueued | WebhookIgnored) -> None:
    """A 200 with `content` as JSON, as BodyResponse would send it."""
    body = msgspec.json.encode(content)
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


WEBHOOK: Final = Operation(
    "receiveClerkWebhook",
    "webhooks",
    "Receive a Clerk webhook",
    description=(
        "Clerk posts `user.created`, `user.updated` and `user.deleted` (other types are "
        "acknowledged and ignored). The Svix signature and timestamp are checked, then the "
        "event is queued and applied by the identity worker; this route touches no database."
    ),
    request=ClerkEvent,
    parameters=[
        Parameter(name, "header", f"Svix's {name} header.", str, required=True)
        for name in SVIX_HEADERS
    ],
    answers=[
        Answer(
            200,
            "Queued; a duplicate (this svix-id was queued in the last 10 minutes: nothing "
            "more is done); or ignored (not a user event).",
            (WebhookQueued, WebhookIgnored),
        ),
        failure(
            400,
            "Bad or stale signature, bad headers, or a body that is not a Clerk event.",
            "missing_svix_headers",
            "malformed_svix_headers",
            "bad_signature",
            "stale_timestamp",
            "future_timestamp",
            "invalid_body",
            "invalid_json",
            "not_a_clerk_event",
        ),
        failure(413, "The body is over 1 MiB.", "body_too_large"),
        failure(
            500,
            "CLERK_WEBHOOK_SECRET is unset or not a whsec_ secret.",
            "webhook_secret_missing",
            "webhook_secret_invalid",
        ),
        failure(503, "Redis is unavailable; Svix delivers the event again.", "queue_unavailable"),
    ],
)

routes: list[BaseRoute] = [
    Route("/webhooks/clerk", documented(WEBHOOK)(ClerkWebhookRoute()), methods=["POST"])
]
