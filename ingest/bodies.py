"""Every body the HTTP API reads or writes, as a typed model.

Requests are decoded and validated by msgspec (`core.decoding.decode`): an unknown or bad
field is a 400 that names it, with the same message the workers would give for the
same field of a job. Responses are encoded from these models, and the OpenAPI
document (ingest/openapi.py) is generated from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from core.errors import InvalidInput
from core.messages import ChatId, ChatMessage, MaxTokens, ModelName, Temperature, check_conversation

#: The largest value of a Postgres bigint.
BIGINT_MAX = 2**63 - 1

ChatStatus = Literal["queued", "running", "ok", "error", "filtered"]
EVENT_ID_PATTERN = r"^\d{1,20}-\d{1,20}$"
EventId = Annotated[
    str,
    msgspec.Meta(
        pattern=EVENT_ID_PATTERN,
        description="An SSE event id: the Redis stream entry id, such as 1718000000000-0.",
    ),
]


class ChatRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A chat to run: a conversation, or the shorthand `prompt` for one user message."""

    messages: Annotated[tuple[ChatMessage, ...], msgspec.Meta(min_length=1)] | None = None
    prompt: str | None = None
    model: ModelName | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None

    def __post_init__(self) -> None:
        if self.prompt is not None:
            if self.messages is not None:
                raise InvalidInput("prompt", "send either prompt or messages, not both.")
            if not self.prompt.strip():
                raise InvalidInput("prompt", "must be a non-empty string.")
        elif self.messages is None:
            raise InvalidInput("messages", "required (or the shorthand prompt).")
        else:
            check_conversation(self.messages)

    @property
    def conversation(self) -> tuple[ChatMessage, ...]:
        if self.messages is not None:
            return self.messages
        assert self.prompt is not None
        return (ChatMessage(role="user", content=self.prompt),)


class ChatAccepted(msgspec.Struct, frozen=True):
    """A chat on its way: where to read it as recorded, and where to stream it."""

    id: ChatId
    status: Literal["queued"]
    url: str
    stream_url: str


class Cancelling(msgspec.Struct, frozen=True):
    """A cancel asked for: the worker stops reading the model promptly."""

    id: ChatId
    status: Literal["cancelling"]


class ExchangeSummary(msgspec.Struct, frozen=True):
    """One exchange of a page of history (its metadata left out)."""

    id: ChatId
    created_at: str
    model: str
    prompt: str | None
    completion: str | None
    status: ChatStatus
    prompt_tokens: int
    completion_tokens: int
    cost_microcents: int
    latency_ms: int | None
    finish_reason: str | None


class Exchange(ExchangeSummary, frozen=True):
    """One exchange as recorded: before the worker starts it, as Redis knows it."""

    metadata: dict[str, Any] | None = None


class HistoryPage(msgspec.Struct, frozen=True):
    """A page of the caller's exchanges, newest first; pass next_before as before."""

    items: list[ExchangeSummary]
    next_before: str | None


class ModelUsage(msgspec.Struct, frozen=True):
    """One model's share of the month."""

    model: str
    tokens: int
    cost_microcents: int


class Usage(msgspec.Struct, frozen=True):
    """This UTC month's tokens and cost against the budget (remaining null: no cap)."""

    month: str
    tokens_used: int
    monthly_token_budget: int
    remaining: int | None
    cost_microcents: int
    by_model: list[ModelUsage]


class ProfileUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The chat settings to change; a field left out keeps its value."""

    monthly_token_budget: Annotated[int, msgspec.Meta(ge=0, le=BIGINT_MAX)] | None = None
    default_model: ModelName | None = None

    def __post_init__(self) -> None:
        if self.monthly_token_budget is None and self.default_model is None:
            raise InvalidInput("body", "set monthly_token_budget, default_model or both.")


class Profile(msgspec.Struct, frozen=True):
    """A user's chat settings (monthly_token_budget 0: no cap)."""

    user_id: str
    monthly_token_budget: int
    default_model: str


class WebhookQueued(msgspec.Struct, frozen=True):
    """The event is on the identity queue (`duplicate`: it already was)."""

    status: Literal["queued", "duplicate"]
    svix_id: str


class WebhookIgnored(msgspec.Struct, frozen=True):
    """The event is not one aiwrap applies; it is acknowledged and dropped."""

    status: Literal["ignored"]
    type: str


class Alive(msgspec.Struct, frozen=True):
    """The process answers."""

    status: Literal["ok"]


class Readiness(msgspec.Struct, frozen=True):
    """Whether Redis and Postgres answer; each check is "ok" or what failed."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


class ErrorDetail(msgspec.Struct, frozen=True):
    """What was wrong: a stable code and a sentence."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """Every 4xx and 5xx."""

    error: ErrorDetail


class SseDelta(msgspec.Struct, frozen=True):
    """`event: delta`: the next piece of the answer's text."""

    content: str


class SseDone(msgspec.Struct, frozen=True):
    """`event: done`: the answer is complete; what it used and cost."""

    status: Literal["ok", "filtered"]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_microcents: int


class SseError(msgspec.Struct, frozen=True):
    """`event: error`: the chat ended without a complete answer, or (without an `id:`)
    the stream broke: reconnect with Last-Event-ID to resume."""

    code: str
    message: str
