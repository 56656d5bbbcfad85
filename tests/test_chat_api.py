"""The /v1 routes end to end over real HTTP: chats, streams, history, usage, admin profile.

The SSE tests in the first half write the chat's Redis stream themselves with
workers.streams, so they test the route alone; the end-to-end tests at the bottom run the
real chat worker against the local model server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import httpx
import psycopg
import pytest
import redis as redis_lib
import redis.asyncio as aioredis
from dramatiq import Message

from ingest import sse as sse_routes
from ingest.app import create_app
from ingest.cli import main as cli_main
from ingest.embedded import EmbeddedRedis, free_port
from ingest.model_server import running_model_server
from ingest.queue import Enqueuer, QueueUnavailable
from workers import streams
from workers.broker import WakingRedisBroker, build_broker
from workers.metering import month_start
from workers.settings import Settings

from .support import ServerThread, with_settings
from .test_auth import ClerkSigner

Db = psycopg.Connection[dict[str, Any]]


# -- arranging ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clerk() -> ClerkSigner:
    return ClerkSigner()


@pytest.fixture
def api(settings: Settings, clerk: ClerkSigner) -> Iterator[httpx.Client]:
    """Ingest that accepts both service keys and the test's session tokens."""
    app = create_app(with_settings(settings, clerk_jwt_key=clerk.public_pem))
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


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
    """Run an async workers.streams helper against Redis from a sync test."""

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


# -- POST /v1/chat ------------------------------------------------------------------------


def test_a_chat_is_recorded_and_enqueued_and_answers_202(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, user_id: str
) -> None:
    response = http.post("/v1/chat", json={"prompt": "hello"}, headers=as_user(settings, user_id))
    assert response.status_code == 202, response.text
    body = response.json()
    chat_id = body["id"]
    assert body == {
        "id": chat_id,
        "status": "queued",
        "url": f"/v1/chat/{chat_id}",
        "stream_url": f"/v1/chat/{chat_id}/stream",
    }
    assert response.headers["location"] == f"/v1/chat/{chat_id}"
    record = redis.hgetall(streams.job_key(chat_id))
    assert record[b"user_id"].decode() == user_id
    assert record[b"status"] == b"queued"
    assert 0 < redis.ttl(streams.job_key(chat_id)) <= settings.stream_ttl_seconds
    job = queued_jobs(redis)[chat_id]
    assert job["user_id"] == user_id
    assert job["messages"] == [{"role": "user", "content": "hello"}]
    assert job["model"] == "gpt-4o-mini"  # an unknown user gets the schema's default


def test_messages_and_options_reach_the_job(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, user_id: str
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "again"},
    ]
    request = {"messages": messages, "model": "gpt-4o", "max_tokens": 50, "temperature": 0.5}
    response = http.post("/v1/chat", json=request, headers=as_user(settings, user_id))
    assert response.status_code == 202, response.text
    job = queued_jobs(redis)[response.json()["id"]]
    assert {k: job[k] for k in request} == request


def test_model_defaults_to_the_users_default_model(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, db: Db, user_id: str
) -> None:
    add_user(db, user_id, model="gpt-4.1-mini")
    response = http.post("/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id))
    assert queued_jobs(redis)[response.json()["id"]]["model"] == "gpt-4.1-mini"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": "10"}, "max_tokens"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens"),
        ({"prompt": "a", "temperature": 2.5}, "temperature"),
        ({"prompt": "a", "temperature": "hot"}, "temperature"),
        ({"prompt": "a", "model": ""}, "model"),
        ({"prompt": "a", "model": 4}, "model"),
        ({"prompt": "a", "stream": True}, "stream"),
    ],
)
def test_invalid_input_is_400_naming_the_field(
    http: httpx.Client, settings: Settings, user_id: str, body: dict[str, Any], field: str
) -> None:
    response = http.post("/v1/chat", json=body, headers=as_user(settings, user_id))
    assert_error(response, 400, "invalid_request", f"{field}:")


def test_a_body_that_is_not_a_json_object_is_400(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    headers = {**as_user(settings, user_id), "Content-Type": "application/json"}
    assert_error(http.post("/v1/chat", content=b"{nope", headers=headers), 400, "invalid_json")
    assert_error(http.post("/v1/chat", content=b"[1]", headers=headers), 400, "invalid_json")


def test_absurdly_deep_json_is_400_not_a_crash(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    headers = {**as_user(settings, user_id), "Content-Type": "application/json"}
    response = http.post("/v1/chat", content=b"[" * 100_000, headers=headers)
    assert_error(response, 400, "invalid_json")


def test_when_the_queue_refuses_the_job_no_record_says_queued(
    http: httpx.Client,
    settings: Settings,
    redis: redis_lib.Redis,
    user_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise QueueUnavailable()

    monkeypatch.setattr(Enqueuer, "send", refuse)
    response = http.post("/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id))
    assert_error(response, 503, "queue_unavailable")
    owners = [redis.hget(key, "user_id") for key in redis.scan_iter("aiwrap:chat:*:job")]
    assert user_id.encode() not in owners


def test_an_unknown_or_unpriced_model_is_400(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, user_id: str
) -> None:
    before = set(queued_jobs(redis))
    response = http.post(
        "/v1/chat",
        json={"prompt": "hi", "model": "gpt-17-ultra"},
        headers=as_user(settings, user_id),
    )
    assert_error(response, 400, "unknown_model", "model:", "gpt-17-ultra")
    assert set(queued_jobs(redis)) == before


def test_a_request_over_the_size_limit_is_413(settings: Settings, user_id: str) -> None:
    app = create_app(with_settings(settings, max_chat_bytes=2048))
    with ServerThread(app) as server:
        headers = as_user(settings, user_id)
        big = {"prompt": "x" * 3000}
        response = httpx.post(f"{server.url}/v1/chat", json=big, headers=headers)
        assert_error(response, 413, "request_too_large", "2048")

        # Chunked, with no Content-Length to go by: counted as it arrives.
        def chunks() -> Iterator[bytes]:
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        response = httpx.post(f"{server.url}/v1/chat", content=chunks(), headers=headers)
        assert_error(response, 413, "request_too_large")
        ok = httpx.post(f"{server.url}/v1/chat", json={"prompt": "x" * 1500}, headers=headers)
        assert ok.status_code == 202


def test_a_user_at_their_budget_is_402_and_nothing_is_enqueued(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, db: Db, user_id: str
) -> None:
    add_user(db, user_id, budget=10)
    add_exchange(db, user_id, tokens=(6, 4))
    before = set(queued_jobs(redis))
    response = http.post("/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id))
    assert_error(response, 402, "budget_exceeded")
    assert set(queued_jobs(redis)) == before


def test_a_user_under_budget_or_without_cap_may_chat(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    add_user(db, user_id, budget=11)
    add_exchange(db, user_id, tokens=(6, 4))
    response = http.post("/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id))
    assert response.status_code == 202


def test_redis_down_is_503_for_chat_and_stream(
    settings: Settings, private_redis: EmbeddedRedis, user_id: str
) -> None:
    app = create_app(with_settings(settings, redis_url=private_redis.url))
    with ServerThread(app) as server:
        private_redis.stop()
        headers = as_user(settings, user_id)
        response = httpx.post(f"{server.url}/v1/chat", json={"prompt": "hi"}, headers=headers)
        assert_error(response, 503, "queue_unavailable")
        assert response.headers["retry-after"] == "1"
        stream = httpx.get(f"{server.url}/v1/chat/{uuid.uuid4()}/stream", headers=headers)
        assert_error(stream, 503, "redis_unavailable")


def test_postgres_down_is_503(settings: Settings, user_id: str) -> None:
    nowhere = f"postgresql://aiwrap@127.0.0.1:{free_port()}/aiwrap"
    with ServerThread(create_app(with_settings(settings, database_url=nowhere))) as server:
        response = httpx.get(
            f"{server.url}/v1/usage", headers=as_user(settings, user_id), timeout=30
        )
    assert_error(response, 503, "database_unavailable")


def test_a_session_token_user_can_chat(
    api: httpx.Client, clerk: ClerkSigner, redis: redis_lib.Redis, user_id: str
) -> None:
    response = api.post("/v1/chat", json={"prompt": "hi"}, headers=clerk.headers(user_id))
    assert response.status_code == 202, response.text
    assert queued_jobs(redis)[response.json()["id"]]["user_id"] == user_id


# -- GET /v1/chat/{id} and DELETE ---------------------------------------------------------


def test_a_queued_chat_is_read_from_its_job_record(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = http.post(
        "/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id)
    ).json()["id"]
    body = http.get(f"/v1/chat/{chat_id}", headers=as_user(settings, user_id)).json()
    assert body["id"] == chat_id
    assert body["status"] == "queued"
    assert body["model"] == "gpt-4o-mini"
    assert body["completion"] is None


def test_a_recorded_chat_is_read_from_prompt_logs_with_its_cost(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id, completion="Hello there.", tokens=(3, 4), cost=285)
    body = http.get(f"/v1/chat/{chat_id}", headers=as_user(settings, user_id)).json()
    assert body["status"] == "ok"
    assert body["prompt"] == "hi" and body["completion"] == "Hello there."
    assert (body["prompt_tokens"], body["completion_tokens"]) == (3, 4)
    assert body["cost_microcents"] == 285
    assert body["latency_ms"] == 12
    assert body["finish_reason"] == "stop"
    assert body["created_at"].endswith("Z")


def test_an_in_flight_row_reads_as_running(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id, completion=None, metadata={"state": "running"}, cost=None)
    body = http.get(f"/v1/chat/{chat_id}", headers=as_user(settings, user_id)).json()
    assert body["status"] == "running"
    assert body["cost_microcents"] == 0


def test_nobody_sees_another_users_chat(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    recorded = add_exchange(db, user_id)
    queued = http.post(
        "/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id)
    ).json()["id"]
    stranger = as_user(settings, other_user())
    for chat_id in (recorded, queued, str(uuid.uuid4()), "not-a-uuid"):
        assert_error(http.get(f"/v1/chat/{chat_id}", headers=stranger), 404, "not_found")
        assert_error(http.delete(f"/v1/chat/{chat_id}", headers=stranger), 404, "not_found")
        stream = http.get(f"/v1/chat/{chat_id}/stream", headers=stranger)
        assert_error(stream, 404, "not_found")


def test_cancelling_sets_the_flag_and_tells_the_workers(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    chat_id = http.post("/v1/chat", json={"prompt": "hi"}, headers=headers).json()["id"]
    pubsub = redis.pubsub()
    pubsub.subscribe(streams.CANCEL_CHANNEL)
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        response = http.delete(f"/v1/chat/{chat_id}", headers=headers)
        assert response.status_code == 202, response.text
        assert response.json() == {"id": chat_id, "status": "cancelling"}
        assert redis.get(streams.cancel_key(chat_id)) == b"1"
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["data"] == chat_id.encode()
    finally:
        pubsub.close()


def test_cancelling_a_finished_chat_is_409(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id)
    response = http.delete(f"/v1/chat/{chat_id}", headers=as_user(settings, user_id))
    assert_error(response, 409, "already_finished", "ok")
    assert not redis.exists(streams.cancel_key(chat_id))


# -- GET /v1/chat/{id}/stream (the route alone) ------------------------------------------


def test_a_late_client_gets_the_whole_answer_and_the_stream_closes(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    ids = publish(settings, chat_id, "Hel", "lo", " world")
    ids.append(finish(settings, chat_id))
    sse = read_sse(http, f"/v1/chat/{chat_id}/stream", as_user(settings, user_id))
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert "no-cache" in sse.headers["cache-control"]
    assert sse.headers["x-accel-buffering"] == "no"
    assert sse.retry == "1000"
    assert [e["id"] for e in sse.events] == ids
    assert [e["event"] for e in sse.events] == ["delta", "delta", "delta", "done"]
    assert sse.text == "Hello world"
    assert sse.events[-1]["data"] == {
        "status": "ok",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "cost_microcents": 165,
    }


def test_resuming_with_last_event_id_has_no_gap_and_no_repeat(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    pieces = [f"p{i} " for i in range(10)]
    publish(settings, chat_id, *pieces)
    finish(settings, chat_id)
    path, headers = f"/v1/chat/{chat_id}/stream", as_user(settings, user_id)
    first = read_sse(http, path, headers, stop_after=4)
    resumed = read_sse(http, path, {**headers, "Last-Event-ID": first.events[-1]["id"]})
    seen = first.events + resumed.events
    assert [e["id"] for e in seen] == sorted({e["id"] for e in seen}, key=stream_order)
    assert first.text + resumed.text == "".join(pieces)
    assert seen[-1]["event"] == "done" and len(seen) == 11
    # Clients that cannot set headers resume with the query parameter.
    by_query = read_sse(http, f"{path}?last_event_id={first.events[-1]['id']}", headers)
    assert by_query.events == resumed.events


def stream_order(entry_id: str) -> tuple[int, int]:
    millis, seq = entry_id.split("-")
    return int(millis), int(seq)


def test_a_live_stream_relays_events_as_they_are_published(
    http: httpx.Client,
    settings: Settings,
    user_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse_routes, "KEEPALIVE_MS", 100)
    chat_id = fake_job(settings, user_id)
    result: dict[str, Sse] = {}
    waiting = threading.Event()
    path, headers = f"/v1/chat/{chat_id}/stream", as_user(settings, user_id)
    reader = threading.Thread(
        target=lambda: result.setdefault("sse", read_sse(http, path, headers, on_comment=waiting))
    )
    reader.start()
    # Nothing is published until the idle stream has sent a keepalive.
    assert waiting.wait(10)
    publish(settings, chat_id, "one ", "two")
    finish(settings, chat_id)
    reader.join(15)
    assert not reader.is_alive()
    sse = result["sse"]
    assert sse.text == "one two"
    assert "keepalive" in sse.comments
    assert sse.events[-1]["event"] == "done"


def test_a_client_that_goes_away_frees_its_blocked_redis_read(
    http: httpx.Client, settings: Settings, redis: redis_lib.Redis, user_id: str
) -> None:
    def blocked_readers() -> int:
        return sum("b" in client["flags"] for client in redis.client_list())

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 10
        while blocked_readers() != count:
            assert time.monotonic() < deadline, f"{blocked_readers()} blocked, not {count}"
            time.sleep(0.02)

    baseline = blocked_readers()
    chat_id = fake_job(settings, user_id)
    path = f"/v1/chat/{chat_id}/stream"
    with http.stream("GET", path, headers=as_user(settings, user_id)) as response:
        lines = response.iter_lines()  # kept: dropping it would close the connection
        assert next(lines) == "retry: 1000"
        wait_for(baseline + 1)
    wait_for(baseline)


def test_a_failed_chat_streams_its_error_event(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    publish(settings, chat_id, "part")
    run(
        lambda r: streams.finish(
            r, chat_id, "error", {"code": "upstream_error", "message": "boom"}, "error", 60
        ),
        settings.redis_url,
    )
    sse = read_sse(http, f"/v1/chat/{chat_id}/stream", as_user(settings, user_id))
    assert [e["event"] for e in sse.events] == ["delta", "error"]
    assert sse.events[-1]["data"] == {"code": "upstream_error", "message": "boom"}


def test_a_malformed_last_event_id_is_400(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    headers = {**as_user(settings, user_id), "Last-Event-ID": "yesterday"}
    response = http.get(f"/v1/chat/{chat_id}/stream", headers=headers)
    assert_error(response, 400, "invalid_request", "Last-Event-ID")


def test_after_the_stream_expired_the_answer_is_replayed_from_postgres(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id, completion="Stored answer.", tokens=(3, 3), cost=225)
    path, headers = f"/v1/chat/{chat_id}/stream", as_user(settings, user_id)
    sse = read_sse(http, path, headers)
    assert [e["event"] for e in sse.events] == ["delta", "done"]
    assert sse.text == "Stored answer."
    assert sse.events[-1]["data"]["cost_microcents"] == 225
    resumed = read_sse(http, path, {**headers, "Last-Event-ID": sse.events[0]["id"]})
    assert [e["event"] for e in resumed.events] == ["done"]


def test_a_browser_eventsource_may_authenticate_with_the_session_cookie(
    api: httpx.Client, clerk: ClerkSigner, settings: Settings, user_id: str
) -> None:
    chat_id = fake_job(settings, user_id)
    publish(settings, chat_id, "hi")
    finish(settings, chat_id)
    cookie = {"Cookie": f"__session={clerk.token(user_id)}"}
    sse = read_sse(api, f"/v1/chat/{chat_id}/stream", cookie)
    assert sse.text == "hi"
    # Only the stream, a read: a cookie never authorises a chat (no cross-site forgery).
    assert_error(api.post("/v1/chat", json={"prompt": "x"}, headers=cookie), 401, "unauthenticated")


# -- GET /v1/chats ------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 12, 100])
def test_history_pages_have_no_gap_or_overlap_when_timestamps_tie(
    http: httpx.Client, settings: Settings, db: Db, user_id: str, limit: int
) -> None:
    tie = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=5)
    for at, count in ((tie + timedelta(seconds=1), 3), (tie, 7), (tie - timedelta(seconds=1), 2)):
        for _ in range(count):
            add_exchange(db, user_id, created_at=at)
    add_exchange(db, other_user(), created_at=tie)  # never shown to user_id
    expected = [
        r["id"]
        for r in db.execute(
            "SELECT id::text FROM prompt_logs WHERE user_id = %s ORDER BY created_at DESC, id DESC",
            (user_id,),
        )
    ]
    seen: list[str] = []
    before: str | None = None
    for _ in range(20):
        params = {"limit": limit, **({"before": before} if before else {})}
        page = http.get("/v1/chats", params=params, headers=as_user(settings, user_id)).json()
        assert len(page["items"]) <= limit
        seen += [item["id"] for item in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == expected
    assert len(expected) == 12


def test_history_items_carry_the_exchange(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    chat_id = add_exchange(db, user_id, completion="Yo.", tokens=(2, 1), cost=90)
    page = http.get("/v1/chats", headers=as_user(settings, user_id)).json()
    assert page["next_before"] is None
    (item,) = page["items"]
    assert item["id"] == chat_id
    assert {k: item[k] for k in ("model", "status", "prompt", "completion", "cost_microcents")} == {
        "model": "gpt-4o-mini",
        "status": "ok",
        "prompt": "hi",
        "completion": "Yo.",
        "cost_microcents": 90,
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"before": "garbage!"}, "before"),
        ({"before": "WzEsMl0"}, "before"),  # valid base64 of [1,2], not a cursor
    ],
)
def test_bad_history_parameters_are_400(
    http: httpx.Client, settings: Settings, user_id: str, params: dict[str, str], field: str
) -> None:
    response = http.get("/v1/chats", params=params, headers=as_user(settings, user_id))
    assert_error(response, 400, "invalid_request", f"{field}:")


# -- GET /v1/usage ------------------------------------------------------------------------


def test_usage_counts_this_calendar_month_by_model(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    add_user(db, user_id, budget=1000)
    add_exchange(db, user_id, tokens=(100, 50), cost=4500)
    add_exchange(db, user_id, tokens=(10, 5), cost=450)
    add_exchange(db, user_id, created_at=month_start() - timedelta(seconds=1), tokens=(999, 999))
    db.execute(
        "INSERT INTO token_usage (user_id, model, prompt_tokens, completion_tokens,"
        " cost_microcents) VALUES (%s, 'gpt-4o', 20, 10, 15000)",
        (user_id,),
    )
    body = http.get("/v1/usage", headers=as_user(settings, user_id)).json()
    assert body == {
        "month": datetime.now(UTC).strftime("%Y-%m"),
        "tokens_used": 195,
        "monthly_token_budget": 1000,
        "remaining": 805,
        "cost_microcents": 19950,
        "by_model": [
            {"model": "gpt-4o", "tokens": 30, "cost_microcents": 15000},
            {"model": "gpt-4o-mini", "tokens": 165, "cost_microcents": 4950},
        ],
    }


def test_usage_without_a_cap_has_null_remaining(
    http: httpx.Client, settings: Settings, user_id: str
) -> None:
    body = http.get("/v1/usage", headers=as_user(settings, user_id)).json()
    assert body["remaining"] is None
    assert body["monthly_token_budget"] == 0
    assert body["by_model"] == []


# -- PUT /v1/admin/users/{user_id}/profile and `aiwrap budget` ---------------------------


def test_the_admin_route_provisions_an_unseen_user_and_sets_their_profile(
    http: httpx.Client, settings: Settings, db: Db, redis: redis_lib.Redis, user_id: str
) -> None:
    path = f"/v1/admin/users/{user_id}/profile"
    response = http.put(
        path,
        json={"monthly_token_budget": 5000, "default_model": "gpt-4o"},
        headers=as_service(settings),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "user_id": user_id,
        "monthly_token_budget": 5000,
        "default_model": "gpt-4o",
    }
    assert db.execute('SELECT 1 FROM "user" WHERE id = %s', (user_id,)).fetchone()
    # A partial update keeps the other field.
    response = http.put(path, json={"monthly_token_budget": 0}, headers=as_service(settings))
    assert response.json()["default_model"] == "gpt-4o"
    assert response.json()["monthly_token_budget"] == 0
    chat = http.post("/v1/chat", json={"prompt": "hi"}, headers=as_user(settings, user_id))
    assert queued_jobs(redis)[chat.json()["id"]]["model"] == "gpt-4o"


def test_the_admin_route_takes_service_keys_only(
    api: httpx.Client, clerk: ClerkSigner, user_id: str
) -> None:
    path = f"/v1/admin/users/{user_id}/profile"
    body = {"monthly_token_budget": 1}
    response = api.put(path, json=body, headers=clerk.headers(user_id))
    assert_error(response, 403, "service_key_required")
    assert_error(api.put(path, json=body), 401, "unauthenticated")


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({}, "body", "invalid_request"),
        ({"monthly_token_budget": -1}, "monthly_token_budget", "invalid_request"),
        ({"monthly_token_budget": "5"}, "monthly_token_budget", "invalid_request"),
        ({"monthly_token_budget": True}, "monthly_token_budget", "invalid_request"),
        ({"monthly_token_budget": 2**63}, "monthly_token_budget", "invalid_request"),
        ({"default_model": "nope-1"}, "default_model", "unknown_model"),
        ({"default_model": ""}, "default_model", "invalid_request"),
        ({"display_name": "x"}, "display_name", "invalid_request"),
    ],
)
def test_bad_profile_input_is_400_naming_the_field(
    http: httpx.Client,
    settings: Settings,
    user_id: str,
    body: dict[str, Any],
    field: str,
    code: str,
) -> None:
    response = http.put(
        f"/v1/admin/users/{user_id}/profile", json=body, headers=as_service(settings)
    )
    assert_error(response, 400, code, f"{field}:")


def test_a_deleted_user_profile_cannot_be_set(
    http: httpx.Client, settings: Settings, db: Db, user_id: str
) -> None:
    db.execute("INSERT INTO user_tombstones (user_id, deleted_at) VALUES (%s, now())", (user_id,))
    response = http.put(
        f"/v1/admin/users/{user_id}/profile",
        json={"monthly_token_budget": 1},
        headers=as_service(settings),
    )
    assert_error(response, 410, "user_deleted")
    assert db.execute('SELECT 1 FROM "user" WHERE id = %s', (user_id,)).fetchone() is None


def test_aiwrap_budget_sets_the_budget_from_the_command_line(
    settings: Settings,
    db: Db,
    user_id: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    assert cli_main(["budget", user_id, "777", "--model", "gpt-4o"]) == 0
    assert "monthly_token_budget=777" in capsys.readouterr().out
    row = db.execute(
        "SELECT monthly_token_budget, default_model FROM user_profiles WHERE user_id = %s",
        (user_id,),
    ).fetchone()
    assert row == {"monthly_token_budget": 777, "default_model": "gpt-4o"}
    assert cli_main(["budget", user_id, "5", "--model", "nope-1"]) == 2
    assert cli_main(["budget", user_id, "-5"]) == 2


# -- end to end, with the real chat worker and the local model server ---------------------


@dataclass
class Stack:
    """Ingest, a chat worker and the model server, all real, on loopback."""

    http: httpx.Client
    broker: WakingRedisBroker
    worker: dramatiq.Worker

    def settle(self) -> None:
        self.broker.join("chat", timeout=30_000)
        self.worker.join()


@pytest.fixture
def stack(settings: Settings) -> Iterator[Stack]:
    with running_model_server() as model_url:
        live = with_settings(settings, openai_base_url=model_url)
        broker = build_broker(live)
        dramatiq.set_broker(broker)
        broker.flush_all()
        worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
        worker.start()
        try:
            with (
                ServerThread(create_app(live)) as server,
                httpx.Client(base_url=server.url, timeout=15) as client,
            ):
                yield Stack(client, broker, worker)
        finally:
            worker.stop()
            broker.close()


def test_a_chat_streams_end_to_end_and_is_logged_metered_and_listed(
    stack: Stack, settings: Settings, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    created = stack.http.post("/v1/chat", json={"prompt": "hi [[words=6]]"}, headers=headers)
    assert created.status_code == 202, created.text
    sse = read_sse(stack.http, created.json()["stream_url"], headers)
    assert sse.text.startswith("You said: hi.")
    done = sse.events[-1]
    assert done["event"] == "done"
    assert done["data"]["status"] == "ok" and done["data"]["finish_reason"] == "stop"
    assert done["data"]["cost_microcents"] == (
        15 * done["data"]["prompt_tokens"] + 60 * done["data"]["completion_tokens"]
    )
    stack.settle()
    exchange = stack.http.get(created.json()["url"], headers=headers).json()
    assert exchange["status"] == "ok"
    assert exchange["completion"] == sse.text
    assert exchange["cost_microcents"] == done["data"]["cost_microcents"]
    usage = stack.http.get("/v1/usage", headers=headers).json()
    tokens = done["data"]["prompt_tokens"] + done["data"]["completion_tokens"]
    assert usage["tokens_used"] == tokens
    history = stack.http.get("/v1/chats", headers=headers).json()
    assert [item["id"] for item in history["items"]] == [created.json()["id"]]


def test_a_reader_that_reconnects_mid_stream_misses_and_repeats_nothing(
    stack: Stack, settings: Settings, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    prompt = {"prompt": "resume me [[words=30 delay_ms=15]]"}
    created = stack.http.post("/v1/chat", json=prompt, headers=headers).json()
    first = read_sse(stack.http, created["stream_url"], headers, stop_after=5)
    rest = read_sse(
        stack.http, created["stream_url"], {**headers, "Last-Event-ID": first.events[-1]["id"]}
    )
    ids = [e["id"] for e in first.events + rest.events]
    assert len(ids) == len(set(ids)) and ids == sorted(ids, key=stream_order)
    assert rest.events[-1]["event"] == "done"
    stack.settle()
    exchange = stack.http.get(created["url"], headers=headers).json()
    assert first.text + rest.text == exchange["completion"]


def test_cancel_stops_the_chat_and_the_partial_exchange_is_logged_and_metered(
    stack: Stack, settings: Settings, db: Db, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    prompt = {"prompt": "long [[words=400 delay_ms=20]]"}
    created = stack.http.post("/v1/chat", json=prompt, headers=headers).json()
    first = read_sse(stack.http, created["stream_url"], headers, stop_after=2)
    cancelled = stack.http.delete(created["url"], headers=headers)
    assert cancelled.status_code == 202, cancelled.text
    rest = read_sse(
        stack.http, created["stream_url"], {**headers, "Last-Event-ID": first.events[-1]["id"]}
    )
    assert rest.events[-1]["event"] == "error"
    assert rest.events[-1]["data"]["code"] == "cancelled"
    stack.settle()
    exchange = stack.http.get(created["url"], headers=headers).json()
    assert exchange["status"] == "error"
    assert exchange["completion"] == first.text + rest.text
    assert len(exchange["completion"].split()) < 400
    metered = db.execute(
        "SELECT count(*) AS n FROM token_usage WHERE prompt_log_id = %s", (created["id"],)
    ).fetchone()
    assert metered == {"n": 1}
    assert_error(stack.http.delete(created["url"], headers=headers), 409, "already_finished")


def test_a_user_who_used_up_their_budget_is_refused_at_the_door(
    stack: Stack, settings: Settings, user_id: str
) -> None:
    headers = as_user(settings, user_id)
    stack.http.put(
        f"/v1/admin/users/{user_id}/profile",
        json={"monthly_token_budget": 5},
        headers=as_service(settings),
    )
    created = stack.http.post("/v1/chat", json={"prompt": "spend it"}, headers=headers)
    assert created.status_code == 202
    assert read_sse(stack.http, created.json()["stream_url"], headers).events[-1]["event"] == "done"
    stack.settle()
    assert_error(
        stack.http.post("/v1/chat", json={"prompt": "more"}, headers=headers),
        402,
        "budget_exceeded",
    )
