"""Benchmark of streamed chat: `python -m bench.chat`.

Runs, all on 127.0.0.1, against embedded Postgres and Redis started here (or
DATABASE_URL / REDIS_URL when both are set): the local model server, one
`aiwrap ingest` process and one `aiwrap worker --processes 1 --queues chat
--threads N` process, each its own OS process. Measures:

1. added time to first token: time from `POST /v1/chat` to the first
   `event: delta` read by an SSE client of `GET /v1/chat/{id}/stream`, minus
   the model server's own time to first token for that request (from its
   `/_stats`, matched by the reply's length, which each probe makes unique);
   p50 and p99, on an idle system (one chat a second) and under load (a
   background of concurrent streamed chats, each with an SSE reader); beside
   it, as a baseline, what the openai SDK alone adds when the bench calls the
   model server itself, as the worker does;
2. how many concurrent upstream streams the one worker process holds, and its
   peak RSS while it does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.identity import percentile, read_reply, services, spawn, wait_for_port

HOST = "127.0.0.1"
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


def rss_mb(pid: int) -> float:
    return status_field(pid, "VmRSS") / 1024


def status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0


def worker_pid(supervisor: int) -> int:
    """The supervisor's worker process: its child with the most threads."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    if not children:
        raise RuntimeError("the worker supervisor has no worker process")
    return max((int(c) for c in children), key=lambda pid: status_field(pid, "Threads"))


async def capacity(
    client: httpx.AsyncClient,
    model_url: str,
    redis_url: str,
    pid: int,
    count: int,
    user_id: str,
    delay_ms: int,
) -> dict[str, float]:
    """Start `count` long chats at once; report peak concurrent streams and RSS.

    Concurrent streams are counted where they are held open: at the model server,
    which only this worker process calls.
    """
    import redis.asyncio as aioredis

    from core import streams

    async def start(i: int) -> str:
        reply = await client.post(
            "/v1/chat",
            headers=auth(user_id),
            json={
                "messages": [
                    {"role": "user", "content": f"cap {i} [[delay_ms={delay_ms} words=30]]"}
                ],
                "model": "gpt-4o-mini",
            },
        )
        reply.raise_for_status()
        return str(reply.json()["id"])

    gate = asyncio.Semaphore(50)

    async def gated(i: int) -> str:
        async with gate:
            return await start(i)

    rss_idle = rss_mb(pid)
    ids = await asyncio.gather(*(gated(i) for i in range(count)))
    redis = aioredis.Redis.from_url(redis_url)
    peak_running = peak_open = peak_rss = 0.0
    statuses: list[Any] = []
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            async with redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(streams.job_key(job_id), "status")
                statuses = await pipe.execute()
            running = sum(1 for s in statuses if s == b"running")
            peak_running = max(peak_running, running)
            upstream = (await client.get(f"{model_url}/_stats")).json()["streams"]["open"]
            peak_open = max(peak_open, upstream)
            peak_rss = max(peak_rss, rss_mb(pid))
            if all(s in (b"ok", b"error", b"filtered") for s in statuses):
                break
            await asyncio.sleep(0.25)
    finally:
        await redis.aclose()
    ok = sum(1 for s in statuses if s == b"ok")
    return {
        "chats": count,
        "peak_concurrent_upstream_streams": peak_open,
        "peak_chats_running": peak_running,
        "finished_ok": ok,
        "rss_idle_mb": round(rss_idle, 1),
        "rss_peak_mb": round(peak_rss, 1),
    }


def summary(name: str, added: list[float]) -> dict[str, Any]:
    ms = sorted(a * 1e3 for a in added)
    return {
        "phase": name,
        "n": len(ms),
        "p50_ms": round(percentile(ms, 0.5), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(ms[-1], 2),
    }


async def run(
    args: argparse.Namespace, ingest_url: str, model_url: str, redis_url: str, supervisor: int
) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(base_url=ingest_url, timeout=120, limits=limits) as client:
        port = int(ingest_url.rsplit(":", 1)[1])
        for _ in range(3):  # warm up every process on the path
            await first_token(port, "user_bench_warmup", f"{PROBE_PROMPT} [[words=1]]")
        results = [
            summary(
                "idle (1 chat/s)",
                await probes(client, port, model_url, args.idle, 1.0, 10, "user_bench_idle"),
            ),
            summary(
                "baseline: the openai SDK alone, idle (1 call/s)",
                await sdk_alone(client, model_url, args.idle),
            ),
        ]

        context = multiprocessing.get_context("spawn")
        finished_chats = context.Value("i", 0)
        settle_s, probing_s = 3.0, args.idle * 0.25 + 5
        load = context.Process(
            target=background_process,
            args=(port, args.load, settle_s + probing_s, "user_bench_load", finished_chats),
        )
        load.start()
        await asyncio.sleep(settle_s)  # let the background reach its steady state
        added = await probes(
            client, port, model_url, args.idle, 0.25, 10 + args.idle, "user_bench_loaded"
        )
        await asyncio.to_thread(load.join, 300)
        finished = finished_chats.value
        results.append(
            {
                **summary(f"under load ({args.load} concurrent SSE streams)", added),
                "background_chats_finished": finished,
            }
        )

        pid = worker_pid(supervisor)
        results.append(
            {
                "phase": "capacity",
                **await capacity(
                    client,
                    model_url,
                    redis_url,
                    pid,
                    args.streams,
                    "user_bench_capacity",
                    args.delay_ms,
                ),
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--idle", type=int, default=30, help="probe chats per phase")
    parser.add_argument(
        "--load", type=int, default=20, help="concurrent background chats in the load phase"
    )
    parser.add_argument(
        "--streams", type=int, default=500, help="chats started at once in the capacity phase"
    )
    parser.add_argument("--threads", type=int, default=600, help="worker threads")
    parser.add_argument(
        "--delay-ms",
        type=int,
        default=1000,
        help="ms between the pieces of a capacity-phase reply (30 pieces)",
    )
    args = parser.parse_args(argv)

    from devstack.embedded import free_port

    with ExitStack() as stack:
        env = stack.enter_context(services(stack))
        model_port, ingest_port = free_port(), free_port()
        env |= {
            "AIWRAP_API_KEYS": API_KEY,
            "OPENAI_API_KEY": "bench",
            "OPENAI_BASE_URL": f"http://{HOST}:{model_port}/v1",
            "AIWRAP_LOG_LEVEL": "WARNING",
        }
        model = spawn(
            stack,
            [
                sys.executable,
                "-c",
                f"from devstack.model_server import serve; serve('{HOST}', {model_port})",
            ],
            env,
        )
        ingest = spawn(
            stack, [sys.executable, "-m", "cli", "ingest", "--port", str(ingest_port)], env
        )
        worker = spawn(
            stack,
            [
                sys.executable,
                "-m",
                "cli.main",
                "worker",
                "--processes",
                "1",
                "--queues",
                "chat",
                "--threads",
                str(args.threads),
            ],
            env,
        )
        wait_for_port(model_port, model)
        wait_for_port(ingest_port, ingest)
        results = asyncio.run(
            run(
                args,
                f"http://{HOST}:{ingest_port}",
                f"http://{HOST}:{model_port}",
                env["REDIS_URL"],
                worker.pid,
            )
        )
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
