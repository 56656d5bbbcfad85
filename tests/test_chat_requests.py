"""POST /v1/chat: a chat is validated, admitted and queued, or refused with a status that
says why."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis as redis_lib

from core import streams
from core.settings import Settings
from devstack.embedded import EmbeddedRedis, free_port
from ingest.app import create_app
from ingest.enqueue import Enqueuer, QueueUnavailable

from .chat_support import (
    Db,
    add_exchange,
    add_user,
    as_user,
    assert_error,
    queued_jobs,
)
from .support import ServerThread, with_settings
from .test_auth import ClerkSigner


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
