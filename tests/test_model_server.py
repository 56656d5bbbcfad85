"""The local model server, seen through the real openai SDK and, for the wire, raw HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from devstack.model_server import running_model_server
from devstack.replies import count_tokens, reply_text

from .support import eventually

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_model_server() as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=TIMEOUT) as c:
        yield c


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def stream_all(client: openai.OpenAI, text: str, **kwargs: Any) -> list[ChatCompletionChunk]:
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=user(text), stream=True, **kwargs
    )
    with stream:
        return list(stream)


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_reasons(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def stats(base_url: str) -> dict[str, Any]:
    response = httpx2.get(base_url.removesuffix("/v1") + "/_stats", timeout=TIMEOUT)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def stats_for(base_url: str, completion_id: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = stats(base_url)["recent"]
    (entry,) = [e for e in entries if e["id"] == completion_id]
    return entry


def test_the_reply_echoes_the_prompt_and_is_the_same_every_time(client: openai.OpenAI) -> None:
    first, second, other = (
        client.chat.completions.create(model="gpt-4o-mini", messages=user(text))
        for text in ("hello world", "hello world", "goodbye world")
    )
    text = first.choices[0].message.content
    assert text == reply_text("hello world") == second.choices[0].message.content
    assert text is not None and text.startswith("You said: hello world. ")
    assert len(text.removeprefix("You said: hello world. ").split()) == 8
    assert other.choices[0].message.content == reply_text("goodbye world") != text
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None
    assert first.usage.prompt_tokens == count_tokens("hello world") == 2
    assert first.usage.completion_tokens == count_tokens(text)
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.system_fingerprint == "aiwrap-dev"
    assert len({first.id, second.id, other.id}) == 3


def test_a_stream_sends_the_same_text_one_token_per_chunk(client: openai.OpenAI) -> None:
    chunks = stream_all(client, "stream me [[words=5]]")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert content_of(chunks) == reply_text("stream me", 5)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == count_tokens(reply_text("stream me", 5))
    assert chunks[-1].choices[0].delta.content is None
    assert finish_reasons(chunks) == ["stop"]
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.system_fingerprint for c in chunks} == {"aiwrap-dev"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


def test_unknown_models_are_echoed_and_known_ones_listed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="my-own-model", messages=user("hi"))
    assert reply.model == "my-own-model"
    assert {m.id for m in client.models.list()} >= {"gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"}


def test_the_wire_format_is_server_sent_events(base_url: str) -> None:
    request = {"model": "gpt-4o", "stream": True, "messages": user("wire [[words=2]]")}
    response = httpx2.post(base_url + "/chat/completions", json=request, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.content
    assert raw.startswith(b"data: {")
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    assert all(e.startswith(b"data: ") for e in events[:-1])
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == reply_text(
        "wire", 2
    )


def test_usage_comes_in_a_last_chunk_only_when_asked_and_not_with_no_usage(
    client: openai.OpenAI,
) -> None:
    asked = stream_all(client, "count me", stream_options={"include_usage": True})
    usage = asked[-1].usage
    assert asked[-1].choices == [] and usage is not None
    assert usage.prompt_tokens == 2
    assert usage.completion_tokens == count_tokens(content_of(asked)) > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in asked[:-1])

    unasked = stream_all(client, "count me")
    assert all(c.usage is None and c.choices for c in unasked)

    refused = stream_all(client, "count me [[no_usage=1]]", stream_options={"include_usage": True})
    assert all(c.usage is None and c.choices for c in refused)
    assert finish_reasons(refused) == ["stop"]

    # A JSON reply leaves usage out too.
    reply = client.chat.completions.create(model="m", messages=user("count me [[no_usage=1]]"))
    assert reply.usage is None


def test_max_tokens_truncates_the_reply_with_finish_reason_length(
    client: openai.OpenAI, base_url: str
) -> None:
    chunks = stream_all(client, "truncate me", max_tokens=4, stream_options={"include_usage": True})
    assert content_of(chunks) == "You said: truncate"
    assert finish_reasons(chunks) == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert stats_for(base_url, chunks[0].id)["completion_tokens"] == 4

    reply = client.chat.completions.create(
        model="m", messages=user("truncate me"), max_completion_tokens=2
    )
    assert reply.choices[0].message.content == "You said"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 2

    roomy = client.chat.completions.create(model="m", messages=user("hi"), max_tokens=1000)
    assert roomy.choices[0].finish_reason == "stop"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(st.characters(codec="utf-8", exclude_characters="[]"), max_size=40),
    max_tokens=st.integers(min_value=1, max_value=30),
)
def test_streamed_text_and_usage_agree_with_the_tokenizer(
    base_url: str, text: str, max_tokens: int
) -> None:
    with openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=TIMEOUT) as c:
        chunks = stream_all(c, text, max_tokens=max_tokens, stream_options={"include_usage": True})
    full = reply_text(" ".join(text.split()))
    streamed = content_of(chunks)
    assert full.startswith(streamed)
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == count_tokens(streamed) == min(max_tokens, count_tokens(full))
    assert usage.prompt_tokens == count_tokens(text)
    truncated = count_tokens(full) > max_tokens
    assert finish_reasons(chunks) == ["length" if truncated else "stop"]


def test_ttft_and_delay_pace_the_stream(base_url: str) -> None:
    async def timed_stream() -> tuple[float, list[float], str]:
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="test", max_retries=0, timeout=TIMEOUT
        ) as client:
            started = time.perf_counter()
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=user("pace [[ttft_ms=300 delay_ms=60 words=2]]"),
                stream=True,
            )
            arrivals: list[float] = []
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        arrivals.append(time.perf_counter() - started)
            return arrivals[0], arrivals, chunk.id

    first, arrivals, completion_id = asyncio.run(timed_stream())
    assert first >= 0.3
    assert len(arrivals) == count_tokens(reply_text("pace", 2)) == 7
    # Lower bounds only: a busy client may read chunks late and bunched, never early.
    assert arrivals[-1] >= 0.3 + 6 * 0.06
    assert stats_for(base_url, completion_id)["ttft_ms"] >= 300


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (400, openai.BadRequestError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_fail_before_answers_the_status_with_an_openai_error(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError], stream: bool
) -> None:
    with pytest.raises(error) as raised:
        client.chat.completions.create(
            model="m", messages=user(f"fail [[fail_before={status}]]"), stream=stream
        )
    assert raised.value.status_code == status
    body = raised.value.response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "0"
        assert raised.value.code == "rate_limit_exceeded"
    else:
        assert "retry-after" not in raised.value.response.headers


def test_fail_times_fails_only_the_first_n_requests_with_the_same_key(
    client: openai.OpenAI, base_url: str
) -> None:
    key = uuid.uuid4().hex
    prompt = f"flaky [[fail_before=500 fail_times=2 key={key}]]"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=user(prompt))
    reply = client.chat.completions.create(model="m", messages=user(prompt))
    assert reply.choices[0].message.content == reply_text("flaky")
    assert client.chat.completions.create(model="m", messages=user(prompt)).choices

    other = f"flaky [[fail_before=500 fail_times=2 key={uuid.uuid4().hex}]]"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=user(other))

    # The SDK's own retries see the same thing: two 429s, then a reply.
    retried = f"flaky [[fail_before=429 fail_times=2 key={uuid.uuid4().hex}]]"
    with openai.OpenAI(base_url=base_url, api_key="test", max_retries=2, timeout=TIMEOUT) as c:
        response = c.chat.completions.with_raw_response.create(model="m", messages=user(retried))
    assert response.retries_taken == 2
    assert response.parse().choices[0].finish_reason == "stop"


def test_cut_after_drops_the_connection_without_finish_or_usage(
    client: openai.OpenAI, base_url: str
) -> None:
    received: list[ChatCompletionChunk] = []
    stream = client.chat.completions.create(
        model="m",
        messages=user("cut me [[cut_after=3]]"),
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream, pytest.raises(openai.APIConnectionError) as raised:
        for chunk in stream:  # bounded: the server sends at most 1 + 3 chunks
            received.append(chunk)
    assert isinstance(raised.value.__cause__, httpx2.RemoteProtocolError)
    assert content_of(received) == "You said:"
    assert finish_reasons(received) == []
    assert all(c.usage is None for c in received)
    entry = stats_for(base_url, received[0].id)
    assert entry["finish_reason"] is None and entry["completion_tokens"] == 3

    request = {"model": "m", "stream": True, "messages": user("cut me [[cut_after=0]]")}
    raw = b""
    with (
        httpx2.stream("POST", base_url + "/chat/completions", json=request, timeout=TIMEOUT) as r,
        pytest.raises(httpx2.RemoteProtocolError),
    ):
        for part in r.iter_bytes():
            raw += part
    assert raw.startswith(b"data: ") and raw.count(b"data: ") == 1
    assert b"[DONE]" not in raw and b'finish_reason":"' not in raw


def test_cut_after_also_ends_an_async_stream_with_a_connection_error(base_url: str) -> None:
    async def read_cut_stream() -> list[str]:
        contents: list[str] = []
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="test", max_retries=0, timeout=TIMEOUT
        ) as client:
            stream = await client.chat.completions.create(
                model="m", messages=user("cut [[cut_after=2]]"), stream=True
            )
            async with stream:
                async for chunk in stream:
                    contents.append(chunk.choices[0].delta.content or "")
        return contents

    with pytest.raises(openai.APIConnectionError):
        asyncio.run(read_cut_stream())


def test_filter_stops_the_reply_with_content_filter(client: openai.OpenAI) -> None:
    chunks = stream_all(client, "naughty [[filter=1]]", stream_options={"include_usage": True})
    assert content_of(chunks) == "You said:"
    assert finish_reasons(chunks) == ["content_filter"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    reply = client.chat.completions.create(model="m", messages=user("naughty [[filter=1]]"))
    assert reply.choices[0].finish_reason == "content_filter"


def test_refuse_is_a_bad_request_with_content_policy_violation(client: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as raised:
            client.chat.completions.create(
                model="m", messages=user("forbidden [[refuse=1]]"), stream=stream
            )
        assert raised.value.code == "content_policy_violation"
        assert raised.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"model": "m"}',
        b'{"messages": []}',
        b'{"messages": ["hi"]}',
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
        b'{"messages": [{"role": "user", "content": "hi [[ttft_ms=soon]]"}]}',
        b'{"messages": [{"role": "user", "content": "hi [[fail_before=200]]"}]}',
        b'{"messages": [{"role": "user", "content": "hi [[colour=red]]"}]}',
    ],
)
def test_a_malformed_request_is_a_400_in_openai_error_shape(base_url: str, body: bytes) -> None:
    response = httpx2.post(
        base_url + "/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert "code" in error


def test_health_answers_ok(base_url: str) -> None:
    response = httpx2.get(base_url.removesuffix("/v1") + "/healthz", timeout=TIMEOUT)
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_stats_count_the_streams_open_now_and_the_most_at_once() -> None:
    async def hold_then_close(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        async with openai.AsyncOpenAI(
            base_url=url, api_key="test", max_retries=0, timeout=TIMEOUT
        ) as client:
            streams = [
                await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=user(f"hold {i} [[delay_ms=5000 words=3]]"),
                    stream=True,
                )
                for i in range(5)
            ]
            for stream in streams:  # the first chunk: every reply is under way
                await anext(aiter(stream))
            holding = stats(url)
            for stream in streams:
                await stream.close()
        assert eventually(lambda: stats(url)["streams"]["open"] == 0, timeout=10)
        return holding, stats(url)

    with running_model_server() as url:  # a server of its own, so the counts are only ours
        holding, after = asyncio.run(hold_then_close(url))

    assert holding["streams"] == {"open": 5, "peak": 5}
    assert after["streams"] == {"open": 0, "peak": 5}


def test_stats_totals_match_what_concurrent_clients_were_told() -> None:
    prompts = [f"request {i} [[words={i % 5} delay_ms=5]]" for i in range(20)]

    async def run_all(url: str) -> list[tuple[str, int, int]]:
        async with openai.AsyncOpenAI(
            base_url=url, api_key="test", max_retries=0, timeout=TIMEOUT
        ) as client:

            async def one(prompt: str) -> tuple[str, int, int]:
                stream = await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "system", "content": "Be brief."}, *user(prompt)],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async with stream:
                    chunks = [chunk async for chunk in stream]
                usage = chunks[-1].usage
                assert usage is not None
                return chunks[0].id, usage.prompt_tokens, usage.completion_tokens

            return await asyncio.gather(*(one(p) for p in prompts))

    with running_model_server() as url:  # a server of its own, so the totals are only ours
        seen = asyncio.run(run_all(url))
        failed_request = {"model": "m", "messages": user("x [[fail_before=503]]")}
        httpx2.post(url + "/chat/completions", json=failed_request, timeout=TIMEOUT)
        reported = stats(url)

    assert len({completion_id for completion_id, _, _ in seen}) == len(prompts)
    assert reported["totals"] == {
        "received": len(prompts) + 1,
        "requests": len(prompts),
        "prompt_tokens": sum(p for _, p, _ in seen),
        "completion_tokens": sum(c for _, _, c in seen),
        "failed": 1,
    }
    by_id = {e["id"]: e for e in reported["recent"]}
    for completion_id, prompt_tokens, completion_tokens in seen:
        entry = by_id[completion_id]
        assert (entry["prompt_tokens"], entry["completion_tokens"]) == (
            prompt_tokens,
            completion_tokens,
        )
        assert entry["finish_reason"] == "stop" and entry["stream"] is True
        assert entry["ttft_ms"] is not None and entry["ttft_ms"] >= 0
