"""Reading a streamed completion's body (workers/upstream.py), over real HTTP.

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

from workers.upstream import Piece, pieces

from .support import ServerThread

BODIES: dict[str, bytes] = {}


async def completions(request: Request) -> Response:
    body = json.loads(await request.body())
    return Response(BODIES[body["messages"][0]["content"]], media_type="text/event-stream")


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


def read(base_url: str, body: str) -> list[Piece]:
    key = f"case {len(BODIES)}"
    BODIES[key] = body.encode()

    async def go() -> list[Piece]:
        async with (
            openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0) as client,
            client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": key}], stream=True
            ) as response,
        ):
            return [piece async for piece in pieces(response)]

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
