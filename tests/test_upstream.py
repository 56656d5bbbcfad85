"""Reading a streamed completion's body (workers/chat/upstream.py), over real HTTP.

A small server answers each request with the SSE body the test chose, byte for
byte, so the shapes the local model server never sends (multi-line data, an
error event, a body without a final blank line) are covered too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from workers.chat.upstream import Gate, Piece, gated, http_client, pieces

from .support import ServerThread

BODIES: dict[str, bytes] = {}
RECEIVED: list[str] = []


async def completions(request: Request) -> Response:
    key = json.loads(await request.body())["messages"][0]["content"]
    RECEIVED.append(key)
    return Response(BODIES[key], media_type="text/event-stream")


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    with ServerThread(app) as server:
        yield f"{server.url}/v1"


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> str:
    delta = {} if content is None else {"content": content}
    return json.dumps(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    )


def case(body: str) -> str:
    key = f"case {len(BODIES)}"
    BODIES[key] = body.encode()
    return key


def model_client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url, api_key="test", max_retries=0, http_client=http_client()
    )


async def call(client: openai.AsyncOpenAI, key: str) -> list[Piece]:
    async with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": key}], stream=True
    ) as response:
        return [piece async for piece in pieces(response)]


def read(base_url: str, body: str) -> list[Piece]:
    async def go() -> list[Piece]:
        async with model_client(base_url) as client:
            return await call(client, case(body))

    return asyncio.run(go())


def test_pieces_carry_content_finish_reason_and_usage(base_url: str) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    body = "".join(
        f"data: {data}\n\n"
        for data in (
            chunk(""),
            chunk("Hi"),
            chunk(" there"),
            chunk(finish="stop"),
            json.dumps({"id": "c1", "choices": [], "usage": usage}),
            "[DONE]",
        )
    )
    assert read(base_url, body) == [
        Piece(),
        Piece(content="Hi"),
        Piece(content=" there"),
        Piece(finish_reason="stop"),
        Piece(usage=(3, 2)),
    ]


def test_nothing_after_done_is_read(base_url: str) -> None:
    body = f"data: {chunk('a')}\n\ndata: [DONE]\n\ndata: {chunk('never')}\n\n"
    assert read(base_url, body) == [Piece(content="a")]


def test_data_may_span_lines_and_omit_the_space_and_the_last_blank_line(base_url: str) -> None:
    first, second = chunk("one"), chunk("two", finish="stop")
    split = first.replace(', "choices"', '\ndata: , "choices"')  # one JSON text in two lines
    body = f"event: message\nid: 1\n: a comment\ndata: {split}\n\ndata:{second}"
    expected = [Piece(content="one"), Piece(content="two", finish_reason="stop")]
    assert read(base_url, body) == expected


def test_a_refusal_is_read_from_the_delta(base_url: str) -> None:
    refusal = json.dumps({"choices": [{"delta": {"refusal": "No."}, "finish_reason": "stop"}]})
    assert read(base_url, f"data: {refusal}\n\n") == [Piece(refusal="No.", finish_reason="stop")]


def test_usage_that_is_not_two_integers_counts_as_none(base_url: str) -> None:
    odd = json.dumps({"choices": [], "usage": {"prompt_tokens": "3", "completion_tokens": 2}})
    assert read(base_url, f"data: {odd}\n\n") == [Piece()]


def test_an_error_event_raises_the_sdks_api_error(base_url: str) -> None:
    error = json.dumps({"error": {"message": "Upstream overloaded.", "type": "server_error"}})
    with pytest.raises(openai.APIError, match="Upstream overloaded"):
        read(base_url, f"data: {chunk('a')}\n\nevent: error\ndata: {error}\n\n")


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", '"text"'])
def test_data_that_is_not_a_json_object_raises_api_error(base_url: str, data: str) -> None:
    with pytest.raises(openai.APIError, match="not a JSON object"):
        read(base_url, f"data: {data}\n\n")


def test_a_request_waits_at_its_gate_until_the_gate_opens(base_url: str) -> None:
    key = case(f"data: {chunk('a', finish='stop')}\n\n")

    async def go() -> tuple[list[str], list[Piece], float | None]:
        gate = Gate()
        async with model_client(base_url) as client:
            with gated(gate):
                task = asyncio.create_task(call(client, key))
            await asyncio.sleep(0.5)  # long enough for an ungated request to arrive
            held = list(RECEIVED)
            gate.open()
            return held, await task, gate.opened_at

    held, got, opened_at = asyncio.run(go())
    assert key not in held
    assert key in RECEIVED and got == [Piece(content="a", finish_reason="stop")]
    assert opened_at is not None


def test_a_call_cancelled_at_its_gate_never_reaches_the_server(base_url: str) -> None:
    key = case(f"data: {chunk('a', finish='stop')}\n\n")

    async def go() -> None:
        async with model_client(base_url) as client:
            with gated(Gate()):
                task = asyncio.create_task(call(client, key))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await call(client, case(f"data: {chunk('b')}\n\n"))  # the client is still usable

    asyncio.run(go())
    assert key not in RECEIVED
