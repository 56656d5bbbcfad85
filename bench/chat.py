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

from bench.chat_clients import (
    API_KEY,
    PROBE_PROMPT,
    auth,
    background_process,
    first_token,
    probes,
    sdk_alone,
    sdk_first_tokens,
)
from bench.stack import (
    HOST,
    percentile,
    rss_mb,
    services,
    spawn,
    status_field,
    wait_for_port,
)


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
            summary(
                "the openai SDK through aiwrap's /v1/chat/completions, idle (1 call/s)",
                await sdk_first_tokens(
                    client,
                    model_url,
                    f"{ingest_url}/v1",
                    {"api_key": API_KEY, "X-User-Id": "user_bench_sdk"},
                    args.idle,
                    first_words=700,
                ),
            ),
            summary(
                "baseline: the same SDK calls straight at the model server, idle (1 call/s)",
                await sdk_first_tokens(
                    client,
                    model_url,
                    f"{model_url}/v1",
                    {"api_key": "bench"},
                    args.idle,
                    first_words=900,
                ),
            ),
        ]

        context = multiprocessing.get_context("spawn")
        finished_chats = context.Value("i", 0)
        settle_s, probing_s = 3.0, args.idle * 0.4 + 10  # the probes, then the SDK probes
        load = context.Process(
            target=background_process,
            args=(port, args.load, settle_s + probing_s, "user_bench_load", finished_chats),
        )
        load.start()
        await asyncio.sleep(settle_s)  # let the background reach its steady state
        added = await probes(
            client, port, model_url, args.idle, 0.25, 10 + args.idle, "user_bench_loaded"
        )
        added_sdk = await sdk_first_tokens(
            client,
            model_url,
            f"{ingest_url}/v1",
            {"api_key": API_KEY, "X-User-Id": "user_bench_sdk_loaded"},
            args.idle // 2,
            first_words=1100,
            every=0.25,
        )
        await asyncio.to_thread(load.join, 300)
        finished = finished_chats.value
        results.append(
            {
                **summary(f"under load ({args.load} concurrent SSE streams)", added),
                "background_chats_finished": finished,
            }
        )
        results.append(
            summary(f"the openai SDK through aiwrap, under load ({args.load} streams)", added_sdk)
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
            # One bench user stands for many: the per-user limits would measure themselves.
            "AIWRAP_USER_MAX_STREAMS": "100000",
            "AIWRAP_MAX_STREAMS": "100000",
            "AIWRAP_USER_REQUESTS_PER_MINUTE": "0",
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


if __name__ == "__main__":
    sys.exit(main())
