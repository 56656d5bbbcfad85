"""What the chat worker tests share: a model server behind the worker, and reading what a
chat left in Redis and Postgres."""

from __future__ import annotations

import json
from typing import Any

import dramatiq
import httpx
import psycopg
import redis as redis_lib

from core import streams
from core.jobs import new_job
from workers.chat.actor import enqueue_chat
from workers.consumer import WakingRedisBroker

Row = dict[str, Any]
JOIN_MS = 30_000


def stats(model_url: str) -> dict[str, Any]:
    return httpx.get(model_url.removesuffix("/v1") + "/_stats", timeout=5).json()  # type: ignore[no-any-return]


def upstream_requests(model_url: str) -> int:
    """Requests the model server has received, whatever became of them."""
    return int(stats(model_url)["totals"]["received"])


def events(redis: redis_lib.Redis, job_id: str) -> list[streams.StreamEvent]:
    entries: Any = redis.xrange(streams.events_key(job_id))
    return [
        streams.StreamEvent(
            i.decode(),
            f[b"event"].decode(),
            json.loads(f[b"data"]),
        )
        for i, f in entries
    ]


def streamed_text(evs: list[streams.StreamEvent]) -> str:
    return "".join(e.data["content"] for e in evs if e.event == "delta")


def terminal(evs: list[streams.StreamEvent]) -> streams.StreamEvent:
    ends = [e for e in evs if e.terminal]
    assert len(ends) == 1, evs
    assert evs[-1] is ends[0]
    return ends[0]


def log_row(db: psycopg.Connection[Row], job_id: str) -> Row | None:
    return db.execute("SELECT * FROM prompt_logs WHERE id = %s", (job_id,)).fetchone()


def usage_rows(db: psycopg.Connection[Row], job_id: str) -> list[Row]:
    return db.execute("SELECT * FROM token_usage WHERE prompt_log_id = %s", (job_id,)).fetchall()


def chat(
    broker: WakingRedisBroker,
    worker: dramatiq.Worker,
    user_id: str,
    content: str,
    **options: Any,
) -> str:
    """Enqueue one chat, wait until the worker has run it, return its id."""
    job = new_job(user_id, [{"role": "user", "content": content}], model="gpt-4o-mini", **options)
    job_id = enqueue_chat(broker, job)
    broker.join("chat", timeout=JOIN_MS)
    worker.join()
    return job_id
