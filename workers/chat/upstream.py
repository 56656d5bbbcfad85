"""Reading a streamed chat completion from an OpenAI-compatible server.

The call itself is the openai SDK's (`with_streaming_response`): its typed
parameters, auth, base URL, timeouts, and its errors for a refused call
(APIStatusError and its subclasses). The body is read here instead, each
`data:` event parsed with orjson into a plain dict. The SDK's own stream builds
pydantic models for every chunk, which cost about three times the CPU of the
rest of a piece's way to the client; a worker holding hundreds of streams spends
most of its time there (see bench/README.md).

The SDK also spends a few milliseconds of CPU building each request, so the
chat actor starts the call while its admission round trip to Postgres is still
out, behind a Gate: the model client's HTTP client holds every request at a
request hook until the chat's gate opens, so nothing goes upstream, and no
connection is taken, before the chat is admitted. A refused chat cancels its
call at the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import orjson
from openai import AsyncAPIResponse


class Gate:
    """Holds a chat's upstream requests until the chat is admitted."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        #: When the gate opened (time.perf_counter()), None while it is shut.
        self.opened_at: float | None = None

    def open(self) -> None:
        if self.opened_at is None:
            self.opened_at = time.perf_counter()
            self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


_gate: ContextVar[Gate | None] = ContextVar("aiwrap_upstream_gate", default=None)


@contextlib.contextmanager
def gated(gate: Gate) -> Iterator[None]:
    """Tasks created inside the block send upstream requests only once `gate` opens."""
    token = _gate.set(gate)
    try:
        yield
    finally:
        _gate.reset(token)


async def _wait_for_gate(_request: httpx2.Request) -> None:
    gate = _gate.get()
    if gate is not None:
        await gate.wait()


def http_client() -> httpx2.AsyncClient:
    """The model client's HTTP client: the SDK's defaults, and the gate.

    A request hook rather than a transport, so that it holds requests whatever
    transport a URL gets (an environment proxy mounts its own).
    """
    return openai.DefaultAsyncHttpxClient(event_hooks={"request": [_wait_for_gate]})


@dataclass(frozen=True)
class Piece:
    """What one chunk's first choice and usage say."""

    content: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None
    #: The chunk's tool-call deltas, as the model sent them (`index`, `id`, `function`).
    tool_calls: list[dict[str, Any]] | None = None


async def pieces(response: AsyncAPIResponse[Any]) -> AsyncIterator[Piece]:
    """The chunks of a streamed completion, up to `data: [DONE]` or the body's end.

    Like the SDK's own stream, an event whose data carries an `error` raises
    openai.APIError; so does data that is not a JSON object.
    """
    data: list[str] = []
    async for line in response.iter_lines():
        if line:
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value.removeprefix(" "))
            continue  # event:, id:, retry: and comments say nothing a chunk needs
        if not data:
            continue
        payload, data = "\n".join(data), []
        if payload.startswith("[DONE]"):
            return
        yield _piece(payload, response)
    if data and not data[0].startswith("[DONE]"):
        yield _piece("\n".join(data), response)


def _piece(payload: str, response: AsyncAPIResponse[Any]) -> Piece:
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        chunk = None
    if not isinstance(chunk, dict):
        raise openai.APIError(
            "The model sent a stream event that is not a JSON object.",
            response.http_request,
            body=payload[:200],
        )
    if chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise openai.APIError(
            message if isinstance(message, str) and message else "The model's stream failed.",
            response.http_request,
            body=error,
        )
    return _first_choice(chunk, _usage(chunk.get("usage")))


def _first_choice(chunk: dict[str, Any], usage: tuple[int, int] | None) -> Piece:
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return Piece(usage=usage)
    choice = choices[0]
    delta = choice.get("delta")
    delta = delta if isinstance(delta, dict) else {}
    tool_calls = delta.get("tool_calls")
    return Piece(
        _text(delta.get("content")),
        _text(delta.get("refusal")),
        _text(choice.get("finish_reason")),
        usage,
        [c for c in tool_calls if isinstance(c, dict)] or None
        if isinstance(tool_calls, list)
        else None,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _usage(usage: object) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int:
        return None
    return prompt, completion
