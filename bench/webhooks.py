"""Load on ingest's webhook route: Svix-signed Clerk events over a lean HTTP/1.1 client,
and the bare Starlette server that is its baseline."""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

from bench.stack import HOST, SECRET, cpu_seconds, read_reply, spawn, wait_for_port

CONNECTIONS = 32


def run_bare_server(port: int) -> None:
    """A Starlette app with one POST route that reads the body and answers JSON."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def accept(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"status": "queued"})

    app = Starlette(routes=[Route("/webhooks/clerk", accept, methods=["POST"])])
    uvicorn.run(app, host=HOST, port=port, log_config=None, server_header=False, proxy_headers=True)


def created_event(user_id: str) -> dict[str, Any]:
    from devstack.clerk import sample_clerk_event

    return sample_clerk_event("user.created", user_id, int(time.time() * 1000))


def signed_request(event: dict[str, Any]) -> bytes:
    from devstack.clerk import signed_request as sign

    body, headers = sign(SECRET, event, f"msg_{uuid.uuid4().hex}")
    lines = [
        "POST /webhooks/clerk HTTP/1.1",
        f"Host: {HOST}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    status, _ = await read_reply(reader)
    return status


async def load(
    port: int, requests: Iterator[bytes], seconds: float, rate: float | None = None
) -> tuple[float, Counter[int]]:
    """Send requests on CONNECTIONS keep-alive connections for `seconds`.

    With `rate`, paced to that many requests a second in all; else flat out.
    Returns requests answered per second and the count of each status.
    """
    statuses: Counter[int] = Counter()
    started = time.perf_counter()
    stop_at = started + seconds
    interval = CONNECTIONS / rate if rate else 0.0

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        next_at = started + index * interval / CONNECTIONS
        try:
            while (now := time.perf_counter()) < stop_at:
                if interval:
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                    next_at += interval
                statuses[await exchange(reader, writer, next(requests))] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
    return sum(statuses.values()) / (time.perf_counter() - started), statuses


def fresh_requests() -> Iterator[bytes]:
    while True:
        yield signed_request(created_event(f"user_bench_{uuid.uuid4().hex[:20]}"))


def pre_signed(count: int) -> Iterator[bytes]:
    """Requests signed ahead of time, so signing costs the load generator nothing."""
    made = [
        signed_request(created_event(f"user_bench_{uuid.uuid4().hex[:20]}")) for _ in range(count)
    ]
    while True:
        yield from made


def measure_http(
    stack: ExitStack, env: dict[str, str], seconds: float, slice_s: float
) -> dict[str, Any]:
    """Webhooks answered per second by each server, in turns of `slice_s` seconds.

    All three servers run at once and take turns under the same load until each
    has had `seconds` of it. A machine whose speed drifts (a shared VM's does, by
    a third within a minute) then slows every server alike, where back-to-back
    runs would hand the drift to whichever ran in the slow spell. The ratio is
    the median over turns of aiwrap's rate over bare Starlette's in the same turn.

    No worker runs, so Redis is emptied after every turn: otherwise the queue would
    grow by a hundred megabytes over the run, and Redis's rewrites of its
    append-only file would take CPU from whichever server had the turn.
    """
    import redis

    from devstack.embedded import free_port

    client = redis.Redis.from_url(env["REDIS_URL"])
    stack.callback(client.close)

    requests = pre_signed(20_000)
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    # The last shows what ingest's one log line per request costs.
    for name, level in (
        ("bare_starlette", "INFO"),
        ("aiwrap_ingest", env["AIWRAP_LOG_LEVEL"]),
        ("aiwrap_ingest_log_level_warning", "WARNING"),
    ):
        port = free_port()
        if name == "bare_starlette":
            cmd = [sys.executable, "-m", "bench.identity", "--bare-server", str(port)]
        else:
            cmd = [sys.executable, "-m", "cli", "ingest", "--port", str(port)]
        process = spawn(stack, cmd, {**env, "AIWRAP_LOG_LEVEL": level})
        wait_for_port(port, process)
        asyncio.run(load(port, requests, 1.0))  # warm up
        client.flushdb()
        servers[name] = (port, process)
    rates: dict[str, list[float]] = {name: [] for name in servers}
    answered = dict.fromkeys(servers, 0.0)
    cpu = dict.fromkeys(servers, 0.0)
    for _ in range(max(1, round(seconds / slice_s))):
        for name, (port, process) in servers.items():
            before = cpu_seconds(process.pid)
            rate, statuses = asyncio.run(load(port, requests, slice_s))
            cpu[name] += cpu_seconds(process.pid) - before
            assert set(statuses) == {200}, f"{name} answered {dict(statuses)}"
            rates[name].append(rate)
            answered[name] += sum(statuses.values())
            client.flushdb()
    for _, process in servers.values():
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    ratios = [
        ours / bare
        for ours, bare in zip(rates["aiwrap_ingest"], rates["bare_starlette"], strict=True)
    ]
    return {
        **{name: round(statistics.median(each)) for name, each in rates.items()},
        "ratio": round(statistics.median(ratios), 2),
        "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
        "cpu_us_per_request": {name: round(1e6 * cpu[name] / answered[name]) for name in servers},
        "turns": len(ratios),
        "connections": CONNECTIONS,
    }
