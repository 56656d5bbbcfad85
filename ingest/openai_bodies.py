"""The bodies of the OpenAI-compatible API, in OpenAI's Chat Completions shapes.

The request's parameters are core.jobs.ModelParams, which the chat job carries to the
model as they were sent, plus what aiwrap reads itself (model, messages, stream,
max_tokens, temperature, n). Any other parameter is refused with a 400 that names it,
as OpenAI does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from core.messages import MaxTokens, Message, ModelName, ModelParams, Temperature


class StreamOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """With include_usage, a streamed answer ends with a chunk of its usage."""

    include_usage: bool = False


class CompletionRequest(ModelParams, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A Chat Completions request: OpenAI's parameters, one choice (n = 1)."""

    messages: Annotated[tuple[Message, ...], msgspec.Meta(min_length=1)]
    model: ModelName | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    n: Literal[1] | None = None

    @property
    def params(self) -> ModelParams:
        """The parameters the model gets as they were sent."""
        fields = msgspec.structs.fields(ModelParams)
        return ModelParams(**{f.name: getattr(self, f.name) for f in fields})


class OpenAIErrorDetail(msgspec.Struct, frozen=True):
    """What was wrong, in OpenAI's words: a sentence, a type, the parameter, a code."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct, frozen=True):
    """An error of the OpenAI-compatible routes, which the SDKs raise as their own."""

    error: OpenAIErrorDetail


class CompletionUsage(msgspec.Struct, frozen=True):
    """The tokens an answer used, as metered."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(msgspec.Struct, frozen=True):
    """The answer: its text and, when the model asked for them, its tool calls."""

    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(msgspec.Struct, frozen=True):
    """The one choice of a completion."""

    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(msgspec.Struct, frozen=True):
    """A whole answer (`stream: false`). Its id is `chatcmpl-` and the chat's id."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class ModelCard(msgspec.Struct, frozen=True):
    """A model aiwrap has a price for."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(msgspec.Struct, frozen=True):
    """The models a chat may name."""

    object: Literal["list"]
    data: list[ModelCard]
