"""A local OpenAI-compatible model server for `aiwrap dev` and the tests.

Routes: `POST /v1/chat/completions` (JSON or SSE), `GET /v1/models`, `GET /healthz`, and
`GET /_stats`, which reports what the server did so callers can check their own books:
`{"totals": {"received", "requests", "prompt_tokens", "completion_tokens", "failed"},
"streams": {"open", "peak"}, "recent": [...]}` (`received` counts every request as it arrives,
`requests` the completions; `streams`: streamed replies in progress, and the most at once),
where `recent` holds the last 1000 completions, oldest first (streams the client abandons
are left out), each
`{"id", "model", "stream", "prompt_tokens", "completion_tokens", "ttft_ms", "finish_reason"}`
(`finish_reason` is null for a stream cut on purpose; `ttft_ms` is server-side time from
request receipt to the first content chunk, null if none was sent).

Replies are deterministic: `You said: <prompt>.` followed by `words` filler words picked by
a SHAKE-256 hash of the prompt (see `reply_text`), streamed one token per chunk.
Tokens are runs of word characters and single punctuation characters (`count_tokens`), so
"You said: hi." is 5 tokens. `prompt_tokens` counts every message's content as sent,
directives included; `completion_tokens` counts the reply as sent.

Tests steer a request with directives in the last user message, `[[key=value ...]]`,
which are removed from the prompt before the reply is made:

    ttft_ms=N      sleep N ms before the first chunk
    delay_ms=N     sleep N ms between content chunks
    words=N        filler words after the echo (default 8)
    fail_before=S  answer HTTP status S (400-599) with OpenAI's error body, before any
                   streaming; 429 carries `retry-after: 0`
    fail_times=N   with fail_before: fail only the first N requests whose directives are
                   exactly these (add `key=<id>` to give each test its own counter)
    key=ID         any string; only distinguishes fail_times counters
    cut_after=N    streams only: drop the TCP connection after N content chunks, with no
                   finish_reason, usage or [DONE] (no cut if the reply is shorter)
    no_usage=1     never send usage: no usage chunk, and no `usage` in a JSON reply
    filter=1       stop after at most 3 content chunks with finish_reason "content_filter"
    refuse=1       answer 400 with code "content_policy_violation"
    tool_call=1    with `tools` in the request: call the first tool, with arguments
                   {"prompt": <prompt>} streamed in 4 pieces, finish_reason "tool_calls"

`max_tokens` (or `max_completion_tokens`) truncates the reply and sets finish_reason
"length". Run it with `uvicorn devstack.model_server:app`, `serve(host, port)`, or in-process
with `running_model_server()`.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
FINGERPRINT = "aiwrap-dev"
FILTER_AFTER = 3
STATS_SIZE = 1000
# 32 made-up words ("karo" ... "nazo"), so one hash byte picks one without bias.
FILLER = tuple(f"{a}a{b}o" for a in "klmn" for b in "rstvwxyz")
DIRECTIVES = re.compile(r"\[\[([^\[\]]*)\]\]")
TOKEN = re.compile(r"\w+|[^\w\s]")
PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")  # one token and the whitespace before it
SWITCHES = ("ttft_ms", "delay_ms", "words", "fail_before", "fail_times", "cut_after")
FLAGS = ("no_usage", "filter", "refuse", "tool_call")
#: Pieces a tool call's arguments are streamed in.
TOOL_PIECES = 4


class RequestFailed(Exception):
    """A request answered with an OpenAI-style error body instead of a completion."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def response(self) -> JSONResponse:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        kind = "rate_limit_error" if self.status == 429 else kind
        body = {"error": {"message": self.message, "type": kind, "param": None, "code": self.code}}
        headers = {"retry-after": "0"} if self.status == 429 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


class StreamCut(Exception):
    """Raised inside a stream's body so uvicorn drops the connection mid-response."""


@dataclass(frozen=True)
class ChatRequest:
    """The parts of a chat completion request this server acts on."""

    model: str
    prompt: str
    prompt_tokens: int
    stream: bool
    include_usage: bool
    max_tokens: int | None
    switches: dict[str, int]
    directive_text: str
    #: The function a `tool_call=1` reply calls: the first of the request's tools.
    tool: str | None = None
    #: The request's top-level fields, for `/_stats` (what reached the model).
    fields: tuple[str, ...] = ()


@dataclass
class Completion:
    """One completion in flight, and what `GET /_stats` reports about it."""

    chat: ChatRequest
    pieces: list[str]
    finish: str | None
    started: float
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    sent: int = 0
    ttft_ms: float | None = None
    #: A tool call's id, function and arguments in pieces, when the reply is one.
    tool_call: tuple[str, str, list[str]] | None = None

    def envelope(self, kind: str) -> dict[str, Any]:
        """The fields every completion object and chunk starts with."""
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.chat.model}
        return head | {"system_fingerprint": FINGERPRINT}

    def usage(self) -> dict[str, int]:
        p, c = self.chat.prompt_tokens, self.sent
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def mark_first_token(self) -> None:
        self.ttft_ms = round((time.perf_counter() - self.started) * 1e3, 3)

    def stats(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.chat.model,
            "stream": self.chat.stream,
            "prompt_tokens": self.chat.prompt_tokens,
            "completion_tokens": self.sent,
            "ttft_ms": self.ttft_ms,
            "finish_reason": self.finish,
            "fields": list(self.chat.fields),
        }


def count_tokens(text: str) -> int:
    """Count tokens the way this server does: word runs plus single punctuation marks."""
    return len(TOKEN.findall(text))


def reply_text(prompt: str, words: int = 8) -> str:
    """The full reply to a prompt (directives removed, whitespace collapsed), untruncated."""
    digest = hashlib.shake_256(prompt.encode()).digest(words)
    return " ".join([f"You said: {prompt}.", *(FILLER[b % len(FILLER)] for b in digest)])


def _content_text(content: object) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        texts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(t for t in texts if isinstance(t, str))
    return content if isinstance(content, str) else ""


def _parse_switches(text: str) -> dict[str, int]:
    switches: dict[str, int] = {}
    for item in text.split():
        name, _, value = item.partition("=")
        if name == "key":
            continue
        if name not in SWITCHES + FLAGS or not value.isdigit() or len(value) > 6:
            raise RequestFailed(400, f"Bad directive {item!r}: see devstack/model_server.py.")
        switches[name] = int(value)
    if not 400 <= switches.get("fail_before", 400) <= 599:
        raise RequestFailed(400, "Directive fail_before must be a status from 400 to 599.")
    return switches


def parse_chat_request(body: bytes) -> ChatRequest:
    """Read a chat completion request body, or raise RequestFailed with a 400."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestFailed(400, "The request body is not valid JSON.") from None
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list) or not messages:
        raise RequestFailed(400, "'messages' must be a non-empty array of messages.")
    if not all(isinstance(m, dict) for m in messages):
        raise RequestFailed(400, "Each message must be an object.")
    texts = [_content_text(m.get("content")) for m in messages]
    users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
    last_user = users[-1] if users else ""
    directive_text = " ".join(b.strip() for b in DIRECTIVES.findall(last_user))
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise RequestFailed(400, "'max_tokens' must be a positive integer.")
    options = data.get("stream_options")
    tools = data.get("tools")
    tool = None
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function")
        tool = function.get("name") if isinstance(function, dict) else None
    return ChatRequest(
        model=str(data.get("model") or MODELS[0]),
        # The prompt is the last user message without its directives, whitespace collapsed.
        prompt=" ".join(DIRECTIVES.sub(" ", last_user).split()),
        prompt_tokens=sum(count_tokens(t) for t in texts),
        stream=data.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        max_tokens=max_tokens,
        switches=_parse_switches(directive_text),
        directive_text=directive_text,
        tool=tool if isinstance(tool, str) else None,
        fields=tuple(sorted(data)),
    )


def plan_completion(chat: ChatRequest, started: float) -> Completion:
    """Decide what a request gets: its reply cut to max_tokens or by the filter."""
    pieces = PIECE.findall(reply_text(chat.prompt, chat.switches.get("words", 8)))
    finish = "stop"
    if chat.max_tokens is not None and len(pieces) > chat.max_tokens:
        pieces, finish = pieces[: chat.max_tokens], "length"
    if chat.switches.get("filter"):
        pieces, finish = pieces[:FILTER_AFTER], "content_filter"
    if chat.switches.get("tool_call") and chat.tool is not None:
        arguments = json.dumps({"prompt": chat.prompt})
        size = -(-len(arguments) // TOOL_PIECES)
        parts = [arguments[i : i + size] for i in range(0, len(arguments), size)]
        completion = Completion(chat, [], "tool_calls", started)
        completion.tool_call = (f"call_{uuid.uuid4().hex[:24]}", chat.tool, parts)
        return completion
    return Completion(chat, pieces, finish, started)
