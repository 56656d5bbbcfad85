"""The pieces a chat is made of, shared by the native API, the OpenAI-compatible API and
the chat job: a conversation's messages (text, parts, tool calls), the parameters the
model gets as they were sent, and the constraints on each (one place for each rule)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec

from .errors import InvalidInput

#: A Clerk user id: short ASCII (`user_...`). Used for X-User-Id, a JWT's sub and paths.
USER_ID_PATTERN: Final = r"^[A-Za-z0-9_\-]{1,128}$"
USER_ID: Final = re.compile(USER_ID_PATTERN)

UserId = Annotated[
    str,
    msgspec.Meta(pattern=USER_ID_PATTERN, description="A Clerk user id (`user_...`)."),
]
ModelName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, description="A model name with a price.")
]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
#: The roles of the native API's messages; a job's may also be "tool" (a tool's result).
Role = Literal["system", "developer", "user", "assistant"]
JobRole = Literal["system", "developer", "user", "assistant", "tool"]
ChatId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        description="A chat's id, which is its prompt_logs.id (a UUID).",
    ),
]

# -- chat ---------------------------------------------------------------------------------


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One message of a conversation: a role and its text."""

    role: Role
    content: str


class FunctionCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The function an assistant's tool call names, and its arguments as JSON text."""

    name: str
    arguments: str


class ToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool call an assistant made, which a later `tool` message answers."""

    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class Message(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """One message of a job's conversation, as OpenAI's Chat Completions API writes it:
    its content text or parts (`text`, `image_url`: passed to the model as they are), an
    assistant's tool calls, or the tool call a `tool` message answers."""

    role: JobRole
    content: str | tuple[dict[str, Any], ...] | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The message's text: its content, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        parts = self.content or ()
        return "\n".join(p["text"] for p in parts if isinstance(p.get("text"), str))

    @property
    def says_something(self) -> bool:
        """Text, a part that is not text (an image), or a tool call: something to answer."""
        parts = () if isinstance(self.content, str | None) else self.content
        has_other_parts = any(p.get("type") != "text" for p in parts)
        return bool(self.text.strip() or self.tool_calls or has_other_parts)


def fold_tool_deltas(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    """Fold a chunk's tool-call deltas into `calls` (by index), as OpenAI streams them:
    a call's first delta brings its id and function name, the later ones more of its
    arguments. The worker keeps its reply's calls so; ingest rebuilds a whole reply so."""
    for delta in deltas:
        index = delta.get("index", 0)
        call = calls.setdefault(
            index if isinstance(index, int) else 0,
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if isinstance(delta.get("id"), str):
            call["id"] = delta["id"]
        function = delta.get("function")
        if isinstance(function, dict):
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    call["function"][key] += function[key]


def check_conversation(
    messages: tuple[ChatMessage, ...] | tuple[Message, ...], field: str = "messages"
) -> None:
    """Refuse a conversation with nothing to answer."""
    if not any(m.says_something if isinstance(m, Message) else m.content.strip() for m in messages):
        raise InvalidInput(field, "every content is empty; there is nothing to answer.")


UnitFloat = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]


class ModelParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The Chat Completions parameters a job passes to the model as they were sent."""

    max_completion_tokens: MaxTokens | None = None
    top_p: UnitFloat | None = None
    stop: str | Annotated[tuple[str, ...], msgspec.Meta(max_length=4)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None

    def given(self) -> dict[str, Any]:
        """The parameters that were sent, for the model call."""
        given: dict[str, Any] = msgspec.to_builtins(self)
        return given
