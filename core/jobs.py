"""The queued jobs, as typed models: what ingest puts on a queue is what a worker reads.

- `apply_clerk_event(svix_id, event)` on the `identity` queue: the Clerk event as Clerk
  signed it. `ClerkEvent` is its envelope, which ingest checks before queueing;
  `parse_clerk_event` reads the whole of it for the identity worker.
- `run_chat(job)` on the `chat` queue: a `ChatJob`.

The models are msgspec Structs rather than pydantic models: they decode and validate
bytes in one pass, 1.4 to 5 times faster than pydantic models of the same fields and
constraints on these paths (`python -m bench.models`), they encode what the Enqueuer
queues, and msgspec gives the JSON Schema the OpenAPI document is built from. A field
that fails gets one message, the same wherever it is caught (core/decoding.py):
`InvalidInput(field, reason)`, which ingest answers 400 and a worker dead-letters.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

from .decoding import convert
from .errors import InvalidChatJob, InvalidEvent, InvalidInput
from .messages import (
    ChatId,
    ChatMessage,
    MaxTokens,
    Message,
    ModelName,
    ModelParams,
    Temperature,
    UserId,
    check_conversation,
)


class ChatJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One chat to run: the `run_chat` message (docs/chat-contract.md)."""

    id: ChatId
    user_id: UserId
    model: ModelName
    messages: Annotated[tuple[Message, ...], msgspec.Meta(min_length=1)]
    requested_at: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    params: ModelParams = ModelParams()

    def __post_init__(self) -> None:
        check_conversation(self.messages)

    @property
    def prompt(self) -> str:
        """The text logged as the prompt: the last user message."""
        users = [m.text for m in self.messages if m.role == "user"]
        return users[-1] if users else self.messages[-1].text

    def request_metadata(self) -> dict[str, Any]:
        """What prompt_logs.metadata records of the request."""
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "messages": len(self.messages),
            "requested_at": self.requested_at,
            **({"params": sorted(self.params.given())} if self.params.given() else {}),
        }


def new_job(
    user_id: str,
    messages: tuple[ChatMessage, ...] | tuple[Message, ...] | list[dict[str, Any]],
    *,
    model: str,
    max_tokens: int | None = None,
    temperature: float | None = None,
    params: ModelParams | None = None,
    job_id: str | None = None,
    now: datetime | None = None,
) -> ChatJob:
    """A new chat job; raise InvalidChatJob when it could never run."""
    return read_chat_job(
        {
            "id": job_id or str(uuid.uuid4()),
            "user_id": user_id,
            "model": model,
            "messages": [msgspec.to_builtins(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "params": msgspec.to_builtins(params or ModelParams()),
            "requested_at": (now or datetime.now(UTC)).astimezone(UTC).isoformat(),
        }
    )


def read_chat_job(value: Any) -> ChatJob:
    """A `run_chat` argument as a ChatJob; raise InvalidChatJob saying what is wrong."""
    try:
        return convert(ChatJob, value, root="job", error=InvalidChatJob)
    except InvalidInput as error:  # check_conversation's
        if isinstance(error, InvalidChatJob):
            raise
        raise InvalidChatJob(error.field, error.reason) from None


# -- Clerk events -------------------------------------------------------------------------

#: The Clerk event types aiwrap applies; others are acknowledged and dropped.
HANDLED_CLERK_EVENTS: Final = frozenset({"user.created", "user.updated", "user.deleted"})

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Clerk's timestamps are milliseconds; anything below this is seconds.
SECONDS_BELOW: Final = 1_000_000_000_000
#: datetime cannot go past the year 9999.
Millis = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799_999)]


class ClerkEvent(msgspec.Struct, frozen=True):
    """A Clerk webhook's envelope: its type, its object, and (for a delete) its time."""

    type: str
    data: dict[str, Any]
    timestamp: Millis | None = None


class EmailAddress(msgspec.Struct, frozen=True):
    """One of a Clerk user's email addresses."""

    id: str | None = None
    email_address: str | None = None


class ClerkUser(msgspec.Struct, frozen=True):
    """The `data` of user.created and user.updated: the fields aiwrap keeps."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    updated_at: Millis
    first_name: str | None = None
    last_name: str | None = None
    image_url: str | None = None
    email_addresses: list[EmailAddress] = []
    primary_email_address_id: str | None = None

    @property
    def primary_email(self) -> str | None:
        """The address whose id is primary_email_address_id, not merely the first."""
        if self.primary_email_address_id is None:
            return None
        for address in self.email_addresses:
            if address.id == self.primary_email_address_id:
                if address.email_address is None:
                    raise InvalidEvent("data.email_addresses", "the primary address has no email.")
                return address.email_address
        return None


class DeletedClerkUser(msgspec.Struct, frozen=True):
    """The `data` of user.deleted: only the id (its time is the envelope's timestamp)."""

    id: Annotated[str, msgspec.Meta(min_length=1)]


class UserChanged(msgspec.Struct, frozen=True):
    """A user.created or user.updated event, as the user table stores it."""

    user_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    image_url: str | None
    updated_at: datetime

    @property
    def display_name(self) -> str | None:
        return " ".join(name for name in (self.first_name, self.last_name) if name) or None


class UserDeleted(msgspec.Struct, frozen=True):
    """A user.deleted event: the user and the time of the delete."""

    user_id: str
    deleted_at: datetime


def parse_clerk_event(event: Any) -> UserChanged | UserDeleted:
    """Read a handled Clerk event; raise InvalidEvent naming what is wrong with it."""
    envelope = convert(ClerkEvent, event, root="event", error=InvalidEvent)
    if envelope.type not in HANDLED_CLERK_EVENTS:
        handled = ", ".join(sorted(HANDLED_CLERK_EVENTS))
        raise InvalidEvent("type", f"{envelope.type!r} is not one of {handled}.")
    if envelope.type == "user.deleted":
        deleted = convert(DeletedClerkUser, envelope.data, root="data", error=InvalidEvent)
        if envelope.timestamp is None:
            raise InvalidEvent("timestamp", "required for user.deleted: the time of the delete.")
        return UserDeleted(deleted.id, _event_time(envelope.timestamp))
    user = convert(ClerkUser, envelope.data, root="data", error=InvalidEvent)
    return UserChanged(
        user_id=user.id,
        email=user.primary_email,
        first_name=user.first_name,
        last_name=user.last_name,
        image_url=user.image_url,
        updated_at=EPOCH + timedelta(milliseconds=user.updated_at),
    )


def _event_time(timestamp: int) -> datetime:
    if timestamp < SECONDS_BELOW:
        # A time in whole seconds could be any millisecond of that second:
        # take the last, so no update made within it outlives the delete.
        return EPOCH + timedelta(seconds=timestamp, milliseconds=999)
    return EPOCH + timedelta(milliseconds=timestamp)
