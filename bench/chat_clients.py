"""The streamed-chat benchmark's clients: probes that time the first token through aiwrap
over a lean HTTP/1.1 client, the SDK-alone baseline, and the background load."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from bench.stack import (
    HOST,
    read_reply,
)

API_KEY = "aiw_bench_" + "k" * 24
PROBE_PROMPT = "bench"
#: "You said: bench." is 5 tokens; a probe with `words=w` answers 5 + w tokens.
PROBE_BASE_TOKENS = 5


def auth(user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}", "X-User-Id": user_id}


async def request_head(
    writer: asyncio.StreamWriter, method: str, path: str, user_id: str, body: bytes = b""
) -> None:
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {HOST}",
        f"Authorization: Bearer {API_KEY}",
        f"X-User-Id: {user_id}",
    ]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)


async def first_token(port: int, user_id: str, content: str, read_all: bool = False) -> float:
    """Seconds from POST /v1/chat to the first `event: delta` of its SSE stream.

    A lean HTTP/1.1 client on two connections opened before the clock starts, as
    a client's keep-alive pool would hold them, so that the figure is aiwrap's
    time and not an HTTP library's. With `read_all`, reads on to the stream's end.
    """
    post_conn = await asyncio.open_connection(HOST, port)
    sse_conn = await asyncio.open_connection(HOST, port)
    body = json.dumps(
        {"messages": [{"role": "user", "content": content}], "model": "gpt-4o-mini"}
    ).encode()
    try:
        started = time.perf_counter()
        await request_head(post_conn[1], "POST", "/v1/chat", user_id, body)
        status, reply = await read_reply(post_conn[0])
        if status != 202:
            raise RuntimeError(f"POST /v1/chat answered {status}: {reply[:200]!r}")
        chat = json.loads(reply)
        reader, writer = sse_conn
        await request_head(writer, "GET", chat["stream_url"], user_id)
        first, seen = None, b""
        while chunk := await reader.read(65536):
            seen += chunk
            if first is None and b"event: delta" in seen:
                first = time.perf_counter() - started
                if not read_all:
                    break
            if b"event: done" in seen or b"event: error" in seen:
                break
            seen = seen[-32:]  # enough to find a marker split across reads
        if first is None:
            raise RuntimeError(f"chat {chat['id']} sent no text")
        return first
    finally:
        for _, conn_writer in (post_conn, sse_conn):
            conn_writer.close()


async def server_ttfts(client: httpx.AsyncClient, model_url: str) -> dict[int, float]:
    """The model server's time to first token (s) by completion tokens, for probes."""
    stats = (await client.get(f"{model_url}/_stats")).json()
    return {
        r["completion_tokens"]: r["ttft_ms"] / 1e3
        for r in stats["recent"]
        if r["ttft_ms"] is not None
    }


async def probes(
    client: httpx.AsyncClient,
    port: int,
    model_url: str,
    count: int,
    every: float,
    words_from: int,
    user_id: str,
) -> list[float]:
    """Added latency (s) of `count` probe chats started `every` seconds apart."""

    async def probe(i: int) -> tuple[int, float]:
        words = words_from + i
        seen = await first_token(port, user_id, f"{PROBE_PROMPT} [[words={words}]]")
        return PROBE_BASE_TOKENS + words, seen

    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(probe(i)))
        await asyncio.sleep(every)
    results = await asyncio.gather(*tasks)
    await asyncio.sleep(0.2)  # let the model server record the last ones
    server = await server_ttfts(client, model_url)
    return [seen - server[tokens] for tokens, seen in results]


async def background(port: int, streams: int, stop: asyncio.Event, user_id: str) -> int:
    """Keep `streams` long chats running, each read to the end over SSE."""
    done = 0

    async def one_after_another() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                await first_token(port, user_id, "load [[delay_ms=20 words=250]]", read_all=True)
            except RuntimeError:
                continue  # ended without text (an error event): counted as not finished
            done += 1

    await asyncio.gather(*(one_after_another() for _ in range(streams)))
    return done


async def sdk_alone(client: httpx.AsyncClient, model_url: str, count: int) -> list[float]:
    """Baseline: what the openai SDK alone adds to the model server's time to first
    token, called as the worker calls it, one call a second."""
    import openai

    from workers.chat import upstream

    results = []
    async with openai.AsyncOpenAI(
        base_url=f"{model_url}/v1",
        api_key="bench",
        max_retries=0,
        http_client=upstream.http_client(),
    ) as sdk:
        for i in range(count):
            words = 500 + i  # apart from the probes' reply lengths
            started = time.perf_counter()
            async with sdk.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"{PROBE_PROMPT} [[words={words}]]"}],
                stream=True,
                stream_options={"include_usage": True},
            ) as response:
                first = None
                async for piece in upstream.pieces(response):
                    if first is None and piece.content:
                        first = time.perf_counter() - started
            assert first is not None
            results.append((PROBE_BASE_TOKENS + words, first))
            await asyncio.sleep(1.0)
    server = await server_ttfts(client, model_url)
    return [seen - server[tokens] for tokens, seen in results]


async def sdk_first_tokens(
    client: httpx.AsyncClient,
    model_url: str,
    base_url: str,
    headers: dict[str, str],
    count: int,
    first_words: int,
    every: float = 1.0,
) -> list[float]:
    """What an app sees: the openai SDK's own stream, from the call to the first content,
    against `base_url` (aiwrap's /v1, or the model server itself), minus the model
    server's own time to first token for that request."""
    import openai

    results = []
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key=headers.pop("api_key"), default_headers=headers, max_retries=0
    ) as sdk:
        for i in range(count):
            words = first_words + i  # each reply's length tells the server's record apart
            started = time.perf_counter()
            stream = await sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"{PROBE_PROMPT} [[words={words}]]"}],
                stream=True,
            )
            first = None
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
            assert first is not None
            results.append((PROBE_BASE_TOKENS + words, first))
            await asyncio.sleep(every)
    server = await server_ttfts(client, model_url)
    return [seen - server[tokens] for tokens, seen in results]


def background_process(
    port: int, streams: int, seconds: float, user_id: str, finished: Any
) -> None:
    """The background load in a process of its own, so that reading its streams does
    not slow the probes' client down and inflate what they measure."""

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        finished.value = await background(port, streams, stop, user_id)

    asyncio.run(main())
