"""Arranging and reading what the /v1 routes tests need: chats in Redis and Postgres, and
SSE read off the wire."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import redis as redis_lib
import redis.asyncio as aioredis
from dramatiq import Message

from core import streams
from core.settings import Settings

Db = psycopg.Connection[dict[str, Any]]


def as_user(settings: Settings, user_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_keys[0]}", "X-User-Id": user_id}


def as_service(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.api_keys[0]}"}


def other_user() -> str:
    return f"user_{uuid.uuid4().hex[:24]}"


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    for word in words:
        assert word in body["error"]["message"]


def run(coro_factory: Any, redis_url: str) -> Any:
    """Run an async core.streams helper against Redis from a sync test."""

    async def go() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await coro_factory(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def fake_job(settings: Settings, user_id: str) -> str:
    """A chat's job record as ingest writes it, with no worker behind it."""
    job_id = str(uuid.uuid4())
    run(
        lambda r: streams.write_job_record(
            r,
            job_id,
            streams.JobRecord(
                user_id, "gpt-4o-mini", streams.QUEUED, datetime.now(UTC).isoformat()
            ),
            60,
        ),
        settings.redis_url,
    )
    return job_id


def publish(settings: Settings, job_id: str, *pieces: str) -> list[str]:
    async def go(r: aioredis.Redis) -> list[str]:
        return [await streams.publish(r, job_id, "delta", {"content": p}) for p in pieces]

    ids: list[str] = run(go, settings.redis_url)
    return ids


def finish(settings: Settings, job_id: str, **done: Any) -> str:
    data = {
        "status": "ok",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "cost_microcents": 165,
        **done,
    }
    entry_id: str = run(
        lambda r: streams.finish(r, job_id, "done", data, "ok", 60), settings.redis_url
    )
    return entry_id


def queued_jobs(redis: redis_lib.Redis) -> dict[str, dict[str, Any]]:
    """The run_chat messages waiting on the chat queue, by job id."""
    jobs = {}
    for raw in redis.hvals("aiwrap:chat.msgs"):
        message = Message.decode(raw)
        if message.actor_name == "run_chat":
            jobs[message.args[0]["id"]] = message.args[0]
    return jobs


def add_user(db: Db, user_id: str, budget: int = 0, model: str = "gpt-4o-mini") -> None:
    db.execute('INSERT INTO "user" (id) VALUES (%s) ON CONFLICT DO NOTHING', (user_id,))
    db.execute(
        "INSERT INTO user_profiles (user_id, monthly_token_budget, default_model)"
        " VALUES (%s, %s, %s)",
        (user_id, budget, model),
    )


def add_exchange(
    db: Db,
    user_id: str,
    *,
    created_at: datetime | None = None,
    completion: str | None = "Hello.",
    status: str = "ok",
    metadata: dict[str, Any] | None = None,
    tokens: tuple[int, int] = (3, 2),
    cost: int | None = 165,
) -> str:
    db.execute('INSERT INTO "user" (id) VALUES (%s) ON CONFLICT DO NOTHING', (user_id,))
    row = db.execute(
        "INSERT INTO prompt_logs (user_id, model, prompt, completion, prompt_tokens,"
        " completion_tokens, latency_ms, status, metadata, created_at)"
        " VALUES (%s, 'gpt-4o-mini', 'hi', %s, %s, %s, 12, %s, %s, COALESCE(%s, now()))"
        " RETURNING id::text",
        (
            user_id,
            completion,
            *tokens,
            status,
            json.dumps(metadata or {"state": "finished", "finish_reason": "stop"}),
            created_at,
        ),
    ).fetchone()
    assert row is not None
    if cost is not None:
        db.execute(
            "INSERT INTO token_usage (user_id, model, prompt_tokens, completion_tokens,"
            " cost_microcents, prompt_log_id, created_at)"
            " VALUES (%s, 'gpt-4o-mini', %s, %s, %s, %s, COALESCE(%s, now()))",
            (user_id, *tokens, cost, row["id"], created_at),
        )
    return str(row["id"])


# -- reading SSE off the wire -------------------------------------------------------------


@dataclass
class Sse:
    """What one SSE response carried."""

    headers: httpx.Headers
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: str | None = None

    @property
    def text(self) -> str:
        return "".join(e["data"]["content"] for e in self.events if e["event"] == "delta")


def read_sse(
    client: httpx.Client,
    path: str,
    headers: dict[str, str],
    *,
    stop_after: int | None = None,
    on_comment: threading.Event | None = None,
) -> Sse:
    """Read a stream, parsing the wire format by hand, until it closes or `stop_after` events."""
    with client.stream("GET", path, headers=headers, timeout=15) as response:
        assert response.status_code == 200, response.read()
        sse = Sse(response.headers)
        pending: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(":"):
                sse.comments.append(line[1:].strip())
                if on_comment is not None:
                    on_comment.set()
            elif line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "retry":
                    sse.retry = value
                else:
                    pending[name] = pending[name] + "\n" + value if name in pending else value
            elif "event" in pending:
                sse.events.append({**pending, "data": json.loads(pending["data"])})
                pending = {}
                if stop_after is not None and len(sse.events) >= stop_after:
                    break
    return sse


def stream_order(entry_id: str) -> tuple[int, int]:
    millis, seq = entry_id.split("-")
    return int(millis), int(seq)
